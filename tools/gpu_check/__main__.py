import sys

from tools.gpu_check.run import main

sys.exit(main())
