// recgen from Java: Recommend with text, SendFeedback, StreamRecommend.
//
//   make stubs-java && clients/java/gen/example [--target 127.0.0.1:50051] [--user alice]
//
// Stubs: protoc --java_out + grpc_java_plugin into clients/java/gen/src (never
// edited); compiled with javac against Debian's jars in /usr/share/java (no
// Maven, no network). See README.md.

import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;
import io.grpc.StatusRuntimeException;
import io.recgen.v1.Context;
import io.recgen.v1.FeedbackType;
import io.recgen.v1.Item;
import io.recgen.v1.RecommendRequest;
import io.recgen.v1.RecommendResponse;
import io.recgen.v1.RecommenderGrpc;
import io.recgen.v1.SendFeedbackRequest;
import io.recgen.v1.SendFeedbackResponse;
import io.recgen.v1.StreamRecommendRequest;
import io.recgen.v1.StreamRecommendResponse;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.util.Iterator;
import java.util.Locale;
import java.util.UUID;
import java.util.concurrent.TimeUnit;
import java.util.stream.Collectors;

public final class Example {
  public static void main(String[] args) throws Exception {
    String target = "127.0.0.1:50051";
    String user = "alice";
    for (int i = 0; i < args.length; i++) {
      if (args[i].equals("--target") && i + 1 < args.length) {
        target = args[++i];
      } else if (args[i].equals("--user") && i + 1 < args.length) {
        user = args[++i];
      } else {
        System.err.println("usage: Example [--target HOST:PORT] [--user ID]");
        System.exit(2);
      }
    }
    PrintStream out = new PrintStream(System.out, true, StandardCharsets.UTF_8);
    ManagedChannel channel = ManagedChannelBuilder.forTarget(target).usePlaintext().build();
    int rc = 0;
    try {
      run(RecommenderGrpc.newBlockingStub(channel), user, out);
    } catch (StatusRuntimeException e) {
      System.err.println("error: " + e.getStatus());
      rc = 1;
    } finally {
      channel.shutdownNow().awaitTermination(5, TimeUnit.SECONDS);
    }
    System.exit(rc);
  }

  static void run(RecommenderGrpc.RecommenderBlockingStub stub, String user, PrintStream out) {
    // 1. Ranked items plus a short text presenting them.
    RecommendResponse resp = stub.withDeadlineAfter(30, TimeUnit.SECONDS).recommend(
        RecommendRequest.newBuilder()
            .setUserId(user).setK(5).setExplain(true)
            .setContext(Context.newBuilder()
                .setDevice("mobile").setLocalTime("2026-11-27T20:15:00+01:00"))
            .build());
    out.printf("model %s, request %s%n", resp.getModelVersion(), resp.getRequestId());
    int rank = 1;
    for (Item item : resp.getItemsList()) {
      out.printf(Locale.ROOT, "  %d. %s [%s] score=%.3f%n",
          rank++, item.getTitle(), item.getItemId(), item.getScore());
    }
    out.printf("text (%s): %s%n", resp.getTextStatus(), resp.getText());
    if (resp.getItemsCount() == 0) {
      throw new IllegalStateException("Recommend returned no items");
    }

    // 2. The user clicks the first item: the very next answer reflects it.
    Item first = resp.getItems(0);
    SendFeedbackResponse ack = stub.withDeadlineAfter(30, TimeUnit.SECONDS).sendFeedback(
        SendFeedbackRequest.newBuilder()
            .setEventId(UUID.randomUUID().toString()).setUserId(user)
            .setItemId(first.getItemId()).setType(FeedbackType.FEEDBACK_TYPE_CLICK)
            .setRequestId(resp.getRequestId())
            .build());
    out.printf("feedback CLICK %s: stored=%b%n", first.getTitle(), ack.getStored());

    // 3. Streamed: items first, then the text piece by piece as it is generated.
    out.print("stream: ");
    Iterator<StreamRecommendResponse> events = stub.withDeadlineAfter(30, TimeUnit.SECONDS)
        .streamRecommend(StreamRecommendRequest.newBuilder()
            .setRequest(RecommendRequest.newBuilder().setUserId(user).setK(3))
            .build());
    while (events.hasNext()) {
      StreamRecommendResponse ev = events.next();
      switch (ev.getEventCase()) {
        case ITEMS:
          out.println(ev.getItems().getItemsList().stream()
              .map(Item::getTitle).collect(Collectors.joining(" | ")));
          break;
        case TEXT_PIECE:
          out.print(ev.getTextPiece());
          out.flush();
          break;
        case FINAL:
          out.printf("%n[final: %s]%n", ev.getFinal().getTextStatus());
          break;
        default:
          break;
      }
    }
  }
}
