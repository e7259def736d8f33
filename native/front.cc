// ntm-front: a native gRPC front end for StreamPackedSteps (docs/service.md, "Native front end").
//
// Why: Python gRPC's own cost per message is about the engine's whole step at 8 sessions x 1 step on a CPU
// (docs/performance.md). This process speaks HTTP/2 and gRPC in C++ and hands each message's bytes, unparsed,
// to the Python server over one Unix socket; the Python server checks and runs them and hands back the
// response bytes. What a message means (sessions, checks, errors) stays defined once, in Python.
//
// The socket carries frames: a 24-byte header (little-endian u32 payload length, u8 kind, 3 bytes zero, u64 stream,
// u64 seq) and the payload. The frame kinds and their meaning are in service/native_front.py (one definition on
// the Python side; this file mirrors the numbers). Responses of a stream leave in request order (seq); at most
// `--window` of a stream's requests are unanswered at a time (a client that stops reading stops being read).
//
// Usage: ntm-front --listen HOST:PORT --engine-socket PATH [--window N] [--max-message-bytes N]
//                  [--tls-cert F --tls-key F [--tls-client-ca F]]
// It connects to PATH, binds, sends READY (seq = the bound port) and serves until the socket closes, then ends
// every open stream with UNAVAILABLE and exits 0. Start-up errors: one line on stderr, exit 2.

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/security/server_credentials.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

// Frame kinds: keep in step with service/native_front.py (Kind).
enum Kind : uint8_t {
  kReady = 1,      // front -> engine: seq = the bound port
  kOpen = 2,       // front -> engine: a stream opened; payload = its authorization header's value
  kMessage = 3,    // front -> engine: one request of a stream (seq = its index in the stream)
  kHalfClose = 4,  // front -> engine: the client sent its last request
  kGone = 5,       // front -> engine: the stream ended (cancelled, or finished)
  kReply = 6,      // engine -> front: the response to request `seq`
  kFinish = 7,     // engine -> front: end the stream now with status `seq`, message = payload
  kAccept = 8,     // engine -> front: the stream may be read (after kOpen)
  kDrain = 9,      // engine -> front: read no more; end each stream UNAVAILABLE once what it sent is answered
  kDrained = 10,   // front -> engine: after kDrain, every stream has ended
};
constexpr size_t kHeader = 24;
constexpr char kMethod[] = "/ntm.v1.NTM/StreamPackedSteps";

std::string Header(uint32_t length, uint8_t kind, uint64_t stream, uint64_t seq) {
  std::string h(kHeader, '\0');
  std::memcpy(&h[0], &length, 4);
  h[4] = static_cast<char>(kind);
  std::memcpy(&h[8], &stream, 8);
  std::memcpy(&h[16], &seq, 8);
  return h;
}

// The engine's socket: one writer at a time (many gRPC threads send), one reader thread.
class Engine {
 public:
  explicit Engine(int fd) : fd_(fd) {}
  bool Send(uint8_t kind, uint64_t stream, uint64_t seq, const std::string& payload) {
    std::string frame = Header(static_cast<uint32_t>(payload.size()), kind, stream, seq);
    frame += payload;
    std::lock_guard<std::mutex> lock(mu_);
    size_t sent = 0;
    while (sent < frame.size()) {
      ssize_t n = ::send(fd_, frame.data() + sent, frame.size() - sent, MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return false;
      sent += static_cast<size_t>(n);
    }
    return true;
  }
  int fd() const { return fd_; }

 private:
  int fd_;
  std::mutex mu_;
};

std::string Flatten(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  std::string out;
  if (!buffer.Dump(&slices).ok()) return out;
  out.reserve(buffer.Length());
  for (const auto& s : slices) out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return out;
}

class Stream;

// Live streams by id, for the reader thread's replies. A stream leaves in OnDone.
class Streams {
 public:
  explicit Streams(Engine* engine) : engine_(engine) {}
  // False when draining: the stream is refused.
  bool Add(uint64_t id, Stream* s) {
    std::lock_guard<std::mutex> lock(mu_);
    if (draining_) return false;
    live_[id] = s;
    return true;
  }
  void Remove(uint64_t id) {
    std::lock_guard<std::mutex> lock(mu_);
    live_.erase(id);
    if (draining_ && live_.empty()) engine_->Send(kDrained, 0, 0, "");
  }
  // kDrain: every live stream drains (Stream::Drain); kDrained once none is left.
  template <typename F>
  void Drain(F drain) {
    std::lock_guard<std::mutex> lock(mu_);
    draining_ = true;
    for (auto& [id, s] : live_) drain(s);
    if (live_.empty()) engine_->Send(kDrained, 0, 0, "");
  }
  // Runs f(stream) under the map's lock, so the stream cannot be deleted meanwhile (OnDone removes it first).
  template <typename F>
  void With(uint64_t id, F f) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = live_.find(id);
    if (it != live_.end()) f(it->second);
  }
  template <typename F>
  void ForEach(F f) {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [id, s] : live_) f(s);
  }

 private:
  Engine* engine_;
  std::mutex mu_;
  bool draining_ = false;
  std::unordered_map<uint64_t, Stream*> live_;
};

// One StreamPackedSteps call: reads requests (at most `window` unanswered), forwards each to the engine, writes
// the engine's replies in request order, and finishes once the client is done and every request is answered.
class Stream : public grpc::ServerGenericBidiReactor {
 public:
  Stream(grpc::GenericCallbackServerContext* ctx, Engine* engine, Streams* streams, uint64_t id, size_t window)
      : engine_(engine), streams_(streams), id_(id), window_(window) {
    if (ctx->method() != kMethod) {
      Finish(grpc::Status(grpc::StatusCode::UNIMPLEMENTED,
                          "this port serves " + std::string(kMethod) + " only; every other call is on the main port"));
      return;
    }
    std::string token;
    auto found = ctx->client_metadata().find("authorization");
    if (found != ctx->client_metadata().end()) token.assign(found->second.data(), found->second.size());
    if (!streams_->Add(id_, this)) {
      Finish(Draining());
      return;
    }
    registered_ = true;
    if (!engine_->Send(kOpen, id_, 0, token)) FinishLocked(Unavailable());
  }

  // From the reader thread, under Streams' lock.
  void Accept() {
    std::lock_guard<std::mutex> lock(mu_);
    if (finishing_) return;
    accepted_ = true;
    MaybeReadLocked();
  }
  void Reply(uint64_t seq, std::string bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    if (finishing_) return;
    replies_.emplace(seq, std::move(bytes));
    MaybeWriteLocked();
  }
  void End(grpc::Status status) {
    std::lock_guard<std::mutex> lock(mu_);
    FinishLocked(status);
  }
  void Drain() {
    std::lock_guard<std::mutex> lock(mu_);
    draining_ = true;
    MaybeFinishLocked();
  }

  void OnReadDone(bool ok) override {
    std::lock_guard<std::mutex> lock(mu_);
    reading_ = false;
    if (finishing_) return;
    if (!ok) {  // the client half-closed (or the call broke: OnCancel/OnDone follow)
      client_done_ = true;
      engine_->Send(kHalfClose, id_, 0, "");
      MaybeFinishLocked();
      return;
    }
    if (!engine_->Send(kMessage, id_, next_read_, Flatten(request_))) {
      FinishLocked(Unavailable());
      return;
    }
    ++next_read_;
    MaybeReadLocked();
  }

  void OnWriteDone(bool ok) override {
    std::lock_guard<std::mutex> lock(mu_);
    writing_ = false;
    if (!ok) {
      FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "the client stopped reading"));
      return;
    }
    ++next_write_;
    if (finishing_) return;
    MaybeWriteLocked();
    MaybeReadLocked();
    MaybeFinishLocked();
  }

  void OnDone() override {
    if (registered_) {
      streams_->Remove(id_);
      engine_->Send(kGone, id_, 0, "");
    }
    delete this;
  }

 private:
  static grpc::Status Unavailable() {
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server's engine is gone: reconnect");
  }
  static grpc::Status Draining() {
    return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                        "the server is stopping: every request it read from this stream was answered; reconnect "
                        "and resend the unanswered ones");
  }
  void MaybeReadLocked() {
    if (accepted_ && !reading_ && !client_done_ && !finishing_ && !draining_ && next_read_ - next_write_ < window_) {
      reading_ = true;
      StartRead(&request_);
    }
  }
  void MaybeWriteLocked() {
    if (writing_ || finishing_) return;
    auto it = replies_.find(next_write_);
    if (it == replies_.end()) return;
    grpc::Slice slice(it->second);
    response_ = grpc::ByteBuffer(&slice, 1);
    replies_.erase(it);
    writing_ = true;
    StartWrite(&response_);
  }
  void MaybeFinishLocked() {
    // Draining with a read in flight: finishing cancels it; a request it would have brought was never read, so
    // never applied, and the client resends it.
    if (writing_ || next_write_ != next_read_) return;
    if (client_done_) {
      FinishLocked(grpc::Status::OK);
    } else if (draining_) {
      FinishLocked(Draining());
    }
  }
  void FinishLocked(const grpc::Status& status) {
    if (finishing_) return;
    finishing_ = true;
    Finish(status);
  }

  Engine* engine_;
  Streams* streams_;
  const uint64_t id_;
  const size_t window_;
  std::mutex mu_;
  bool registered_ = false, accepted_ = false, reading_ = false, writing_ = false;
  bool client_done_ = false, finishing_ = false, draining_ = false;
  uint64_t next_read_ = 0, next_write_ = 0;
  std::map<uint64_t, std::string> replies_;  // answered out of order, waiting for their turn
  grpc::ByteBuffer request_, response_;
};

class Service : public grpc::CallbackGenericService {
 public:
  Service(Engine* engine, Streams* streams, size_t window) : engine_(engine), streams_(streams), window_(window) {}
  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext* ctx) override {
    return new Stream(ctx, engine_, streams_, next_id_.fetch_add(1), window_);
  }

 private:
  Engine* engine_;
  Streams* streams_;
  size_t window_;
  std::atomic<uint64_t> next_id_{1};
};

// The reader thread: the engine's frames to their streams, until the socket closes.
void ReadEngine(Engine* engine, Streams* streams) {
  std::string buffer;
  std::vector<char> chunk(1 << 16);
  for (;;) {
    ssize_t n = ::recv(engine->fd(), chunk.data(), chunk.size(), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    buffer.append(chunk.data(), static_cast<size_t>(n));
    size_t at = 0;
    while (buffer.size() - at >= kHeader) {
      uint32_t length;
      uint64_t stream, seq;
      std::memcpy(&length, buffer.data() + at, 4);
      uint8_t kind = static_cast<uint8_t>(buffer[at + 4]);
      std::memcpy(&stream, buffer.data() + at + 8, 8);
      std::memcpy(&seq, buffer.data() + at + 16, 8);
      if (buffer.size() - at - kHeader < length) break;
      std::string payload = buffer.substr(at + kHeader, length);
      at += kHeader + length;
      streams->With(stream, [&](Stream* s) {
        if (kind == kReply) {
          s->Reply(seq, std::move(payload));
        } else if (kind == kAccept) {
          s->Accept();
        } else if (kind == kFinish) {
          s->End(grpc::Status(static_cast<grpc::StatusCode>(seq), payload));
        }
      });
      if (kind == kDrain) streams->Drain([](Stream* s) { s->Drain(); });
    }
    buffer.erase(0, at);
  }
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

int Fail(const std::string& message) {
  std::cerr << "ntm-front: " << message << std::endl;
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::map<std::string, std::string> args;
  for (int i = 1; i + 1 < argc; i += 2) args[argv[i]] = argv[i + 1];
  if (argc % 2 == 0 || !args.count("--listen") || !args.count("--engine-socket")) {
    return Fail("usage: ntm-front --listen HOST:PORT --engine-socket PATH [--window N] [--max-message-bytes N] "
                "[--tls-cert F --tls-key F [--tls-client-ca F]]");
  }
  prctl(PR_SET_PDEATHSIG, SIGTERM);  // the Python server owns this process: it ends with it
  std::signal(SIGPIPE, SIG_IGN);
  size_t window = args.count("--window") ? std::stoul(args["--window"]) : 256;
  int max_bytes = args.count("--max-message-bytes") ? std::stoi(args["--max-message-bytes"]) : 4 << 20;

  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  const std::string& path = args["--engine-socket"];
  if (path.size() >= sizeof(addr.sun_path)) return Fail("engine socket path too long: " + path);
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  if (fd < 0 || ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    return Fail("cannot connect to the engine socket " + path + ": " + std::strerror(errno));
  }
  Engine engine(fd);
  Streams streams(&engine);
  Service service(&engine, &streams, window);

  std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials();
  if (args.count("--tls-cert")) {
    grpc::SslServerCredentialsOptions ssl;
    try {
      ssl.pem_key_cert_pairs.push_back({ReadFile(args["--tls-key"]), ReadFile(args["--tls-cert"])});
      if (args.count("--tls-client-ca")) {
        ssl.pem_root_certs = ReadFile(args["--tls-client-ca"]);
        ssl.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
      }
    } catch (const std::exception& err) {
      return Fail(err.what());
    }
    credentials = grpc::SslServerCredentials(ssl);
  }
  int port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort(args["--listen"], credentials, &port);
  builder.RegisterCallbackGenericService(&service);
  builder.SetMaxReceiveMessageSize(max_bytes);
  builder.SetMaxSendMessageSize(max_bytes);
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);  // a taken port is an error, not a shared port
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || port == 0) return Fail("cannot bind " + args["--listen"]);
  if (!engine.Send(kReady, 0, static_cast<uint64_t>(port), "")) return Fail("the engine socket closed at start");

  ReadEngine(&engine, &streams);  // until the Python server closes the socket
  streams.ForEach([](Stream* s) {
    s->End(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is stopping: reconnect"));
  });
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  return 0;
}
