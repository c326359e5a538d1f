# frozen_string_literal: true

# recgen from Ruby: Recommend with text, SendFeedback, StreamRecommend.
#
#   make stubs-ruby && ruby clients/ruby/example.rb [--target 127.0.0.1:50051] [--user alice]
#
# Stubs: protoc --ruby_out + grpc_ruby_plugin into clients/ruby/gen (never
# edited); runtime from Debian's ruby-grpc and ruby-google-protobuf.

$LOAD_PATH.unshift(File.join(__dir__, 'gen'))

require 'optparse'
require 'securerandom'
require 'grpc'
require 'recgen/v1/recommender_services_pb'

V1 = Recgen::V1
$stdout.sync = true

opts = { target: '127.0.0.1:50051', user: 'alice' }
OptionParser.new do |o|
  o.on('--target HOST:PORT') { |v| opts[:target] = v }
  o.on('--user ID') { |v| opts[:user] = v }
end.parse!
user = opts[:user]

stub = V1::Recommender::Stub.new(opts[:target], :this_channel_is_insecure)
deadline = -> { Time.now + 30 }

begin
  # 1. Ranked items plus a short text presenting them.
  resp = stub.recommend(
    V1::RecommendRequest.new(
      user_id: user, k: 5, explain: true,
      context: V1::Context.new(device: 'mobile', local_time: '2026-11-27T20:15:00+01:00')
    ),
    deadline: deadline.call
  )
  puts "model #{resp.model_version}, request #{resp.request_id}"
  resp.items.each_with_index do |item, i|
    puts format('  %<rank>d. %<title>s [%<id>s] score=%<score>.3f',
                rank: i + 1, title: item.title, id: item.item_id, score: item.score)
  end
  puts "text (#{resp.text_status}): #{resp.text}"
  abort 'error: Recommend returned no items' if resp.items.empty?

  # 2. The user clicks the first item: the very next answer reflects it.
  first = resp.items[0]
  ack = stub.send_feedback(
    V1::SendFeedbackRequest.new(
      event_id: SecureRandom.uuid, user_id: user, item_id: first.item_id,
      type: :FEEDBACK_TYPE_CLICK, request_id: resp.request_id
    ),
    deadline: deadline.call
  )
  puts "feedback CLICK #{first.title}: stored=#{ack.stored}"

  # 3. Streamed: items first, then the text piece by piece as it is generated.
  print 'stream: '
  events = stub.stream_recommend(
    V1::StreamRecommendRequest.new(request: V1::RecommendRequest.new(user_id: user, k: 3)),
    deadline: deadline.call
  )
  events.each do |ev|
    case ev.event
    when :items then puts ev.items.items.map(&:title).join(' | ')
    when :text_piece then print ev.text_piece
    when :final then puts "\n[final: #{ev.final.text_status}]"
    end
  end
rescue GRPC::BadStatus => e
  warn "error: #{e.class}: #{e.details}"
  exit 1
end
