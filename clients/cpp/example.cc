// recgen from C++: Recommend with text, SendFeedback, StreamRecommend.
//
//   make stubs-cpp && clients/cpp/gen/bin/example [--target 127.0.0.1:50051] [--user alice]
//
// Stubs: protoc + grpc_cpp_plugin into clients/cpp/gen (never edited); built
// with g++ and `pkg-config --cflags --libs grpc++ protobuf` (see README.md).
#include <chrono>
#include <cstdio>
#include <iostream>
#include <memory>
#include <random>
#include <string>

#include <grpcpp/grpcpp.h>

#include "recgen/v1/recommender.grpc.pb.h"

namespace v1 = recgen::v1;

namespace {

std::string NewEventId() {
  std::random_device rd;
  std::mt19937_64 gen((static_cast<uint64_t>(rd()) << 32) ^ rd());
  char buf[33];
  std::snprintf(buf, sizeof buf, "%016llx%016llx", static_cast<unsigned long long>(gen()),
                static_cast<unsigned long long>(gen()));
  return buf;
}

void SetDeadline(grpc::ClientContext& ctx, int seconds) {
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(seconds));
}

int Fail(const char* rpc, const grpc::Status& st) {
  std::cerr << "error: " << rpc << ": " << st.error_code() << " " << st.error_message() << "\n";
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  std::string target = "127.0.0.1:50051", user = "alice";
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if ((a == "--target" || a == "--user") && i + 1 < argc) {
      (a == "--target" ? target : user) = argv[++i];
    } else {
      std::cerr << "usage: " << argv[0] << " [--target HOST:PORT] [--user ID]\n";
      return 2;
    }
  }

  auto channel = grpc::CreateChannel(target, grpc::InsecureChannelCredentials());
  auto stub = v1::Recommender::NewStub(channel);

  // 1. Ranked items plus a short text presenting them.
  v1::RecommendRequest req;
  req.set_user_id(user);
  req.set_k(5);
  req.set_explain(true);
  req.mutable_context()->set_device("mobile");
  req.mutable_context()->set_local_time("2026-11-27T20:15:00+01:00");
  v1::RecommendResponse resp;
  {
    grpc::ClientContext ctx;
    SetDeadline(ctx, 30);
    grpc::Status st = stub->Recommend(&ctx, req, &resp);
    if (!st.ok()) return Fail("Recommend", st);
  }
  std::cout << "model " << resp.model_version() << ", request " << resp.request_id() << "\n";
  for (int i = 0; i < resp.items_size(); ++i) {
    const auto& item = resp.items(i);
    char score[32];
    std::snprintf(score, sizeof score, "%.3f", item.score());
    std::cout << "  " << i + 1 << ". " << item.title() << " [" << item.item_id() << "] score=" << score
              << "\n";
  }
  std::cout << "text (" << v1::TextStatus_Name(resp.text_status()) << "): " << resp.text() << "\n";
  if (resp.items_size() == 0) {
    std::cerr << "error: Recommend returned no items\n";
    return 1;
  }

  // 2. The user clicks the first item: the very next answer reflects it.
  const v1::Item& first = resp.items(0);
  v1::SendFeedbackRequest fb;
  fb.set_event_id(NewEventId());
  fb.set_user_id(user);
  fb.set_item_id(first.item_id());
  fb.set_type(v1::FEEDBACK_TYPE_CLICK);
  fb.set_request_id(resp.request_id());
  v1::SendFeedbackResponse ack;
  {
    grpc::ClientContext ctx;
    SetDeadline(ctx, 30);
    grpc::Status st = stub->SendFeedback(&ctx, fb, &ack);
    if (!st.ok()) return Fail("SendFeedback", st);
  }
  std::cout << "feedback CLICK " << first.title() << ": stored=" << (ack.stored() ? "true" : "false")
            << "\n";

  // 3. Streamed: items first, then the text piece by piece as it is generated.
  v1::StreamRecommendRequest sreq;
  sreq.mutable_request()->set_user_id(user);
  sreq.mutable_request()->set_k(3);
  grpc::ClientContext sctx;
  SetDeadline(sctx, 30);
  auto reader = stub->StreamRecommend(&sctx, sreq);
  std::cout << "stream: " << std::flush;
  v1::StreamRecommendResponse ev;
  while (reader->Read(&ev)) {
    switch (ev.event_case()) {
      case v1::StreamRecommendResponse::kItems: {
        const auto& items = ev.items().items();
        for (int i = 0; i < items.size(); ++i) std::cout << (i ? " | " : "") << items[i].title();
        std::cout << std::endl;
        break;
      }
      case v1::StreamRecommendResponse::kTextPiece:
        std::cout << ev.text_piece() << std::flush;
        break;
      case v1::StreamRecommendResponse::kFinal:
        std::cout << "\n[final: " << v1::TextStatus_Name(ev.final().text_status()) << "]" << std::endl;
        break;
      default:
        break;
    }
  }
  grpc::Status st = reader->Finish();
  if (!st.ok()) return Fail("StreamRecommend", st);
  return 0;
}
