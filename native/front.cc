// libntmfront: a native gRPC front end for StreamPackedSteps, loaded into the server's process (docs/service.md,
// "Native front end"; the Python side is service/native_front.py, through ctypes).
//
// Why: Python gRPC's own cost per message is about the engine's whole step at 8 sessions x 1 step on a CPU, much
// of it thread hand-offs (docs/performance.md). Here HTTP/2 and gRPC run in C++ (Debian's gRPC C++ library), each
// request's bytes wait in a queue that one Python thread takes them from (`ntmf_next`, blocking without the GIL),
// and the response bytes are written from the thread that finished the message (`ntmf_reply`). What a message
// means (sessions, checks, errors) stays defined once, in Python.
//
// Events (`ntmf_next`'s kind; service/native_front.py's Kind mirrors the numbers): a stream opened (payload: its
// authorization header), a request of a stream (seq: its index in the stream), the client half-closed, a stream
// ended, every stream drained, the front end stopped. Responses of a stream leave in request order (seq); at most
// `window` of a stream's requests are unanswered at a time (a client that stops reading stops being read).

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/security/server_credentials.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <deque>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

// Event kinds: keep in step with service/native_front.py (Kind).
enum Kind : int {
  kStopped = 0,    // the front end stopped: no more events
  kOpen = 2,       // a stream opened; payload = its authorization header's value
  kMessage = 3,    // one request of a stream (seq = its index in the stream)
  kHalfClose = 4,  // the client sent its last request
  kGone = 5,       // the stream ended
  kDrained = 10,   // after ntmf_drain, every stream has ended
};
constexpr char kMethod[] = "/ntm.v1.NTM/StreamPackedSteps";

struct Event {
  int kind;
  uint64_t stream, seq;
  std::string payload;
};

// What Python takes, in order: one consumer (ntmf_next), many producers (gRPC's threads).
class Events {
 public:
  void Push(int kind, uint64_t stream, uint64_t seq, std::string payload) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back({kind, stream, seq, std::move(payload)});
    }
    ready_.notify_one();
  }
  // The next event, copied into buf when it fits (its payload length returned); -length when buf is too small (the
  // event stays first, for a call with a larger buf).
  long Next(char* buf, long cap, int* kind, uint64_t* stream, uint64_t* seq) {
    std::unique_lock<std::mutex> lock(mu_);
    ready_.wait(lock, [this] { return !queue_.empty(); });
    Event& e = queue_.front();
    long length = static_cast<long>(e.payload.size());
    if (length > cap) return -length;
    std::memcpy(buf, e.payload.data(), e.payload.size());
    *kind = e.kind;
    *stream = e.stream;
    *seq = e.seq;
    queue_.pop_front();
    return length;
  }

 private:
  std::mutex mu_;
  std::condition_variable ready_;
  std::deque<Event> queue_;
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

// Live streams by id, for replies from Python. A stream leaves in OnDone.
class Streams {
 public:
  explicit Streams(Events* events) : events_(events) {}
  bool Add(uint64_t id, Stream* s) {  // false while draining: the stream is refused
    std::lock_guard<std::mutex> lock(mu_);
    if (draining_) return false;
    live_[id] = s;
    return true;
  }
  void Remove(uint64_t id) {
    std::lock_guard<std::mutex> lock(mu_);
    live_.erase(id);
    if (draining_ && live_.empty()) events_->Push(kDrained, 0, 0, "");
  }
  // Runs f(stream) under the map's lock, so the stream cannot be deleted meanwhile (OnDone removes it first).
  template <typename F>
  bool With(uint64_t id, F f) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = live_.find(id);
    if (it == live_.end()) return false;
    f(it->second);
    return true;
  }
  template <typename F>
  void Drain(F drain) {
    std::lock_guard<std::mutex> lock(mu_);
    draining_ = true;
    for (auto& [id, s] : live_) drain(s);
    if (live_.empty()) events_->Push(kDrained, 0, 0, "");
  }

 private:
  Events* events_;
  std::mutex mu_;
  bool draining_ = false;
  std::unordered_map<uint64_t, Stream*> live_;
};

// One StreamPackedSteps call: reads requests (at most `window` unanswered) into the event queue, writes the
// replies in request order, and finishes once the client is done and every request is answered.
class Stream : public grpc::ServerGenericBidiReactor {
 public:
  Stream(grpc::GenericCallbackServerContext* ctx, Events* events, Streams* streams, uint64_t id, size_t window)
      : events_(events), streams_(streams), id_(id), window_(window) {
    if (ctx->method() != kMethod) {
      Finish(grpc::Status(grpc::StatusCode::UNIMPLEMENTED,
                          "this port serves " + std::string(kMethod) + " only; every other call is on the main port"));
      return;
    }
    if (!streams_->Add(id_, this)) {
      Finish(Draining());
      return;
    }
    registered_ = true;
    std::string token;
    auto found = ctx->client_metadata().find("authorization");
    if (found != ctx->client_metadata().end()) token.assign(found->second.data(), found->second.size());
    events_->Push(kOpen, id_, 0, std::move(token));
  }

  // From Python, under Streams' lock.
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
  void End(const grpc::Status& status) {
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
    if (!ok) {  // the client half-closed (or the call broke: OnDone follows)
      client_done_ = true;
      events_->Push(kHalfClose, id_, 0, "");
      MaybeFinishLocked();
      return;
    }
    events_->Push(kMessage, id_, next_read_++, Flatten(request_));
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
      events_->Push(kGone, id_, 0, "");
    }
    delete this;
  }

 private:
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

  Events* events_;
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
  Service(Events* events, Streams* streams, size_t window) : events_(events), streams_(streams), window_(window) {}
  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext* ctx) override {
    return new Stream(ctx, events_, streams_, next_id_.fetch_add(1), window_);
  }

 private:
  Events* events_;
  Streams* streams_;
  size_t window_;
  std::atomic<uint64_t> next_id_{1};
};

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// One front end: its event queue, its streams, its gRPC server.
struct Front {
  Events events;
  Streams streams{&events};
  std::unique_ptr<Service> service;
  std::unique_ptr<grpc::Server> server;
};

void Fail(char* error, long cap, const std::string& message) {
  if (cap > 0) {
    std::strncpy(error, message.c_str(), static_cast<size_t>(cap - 1));
    error[cap - 1] = '\0';
  }
}

}  // namespace

#pragma GCC visibility push(default)  // the library's only exports: the C functions below (ctypes calls them)
extern "C" {

// Binds `listen` (host:port; port 0 picks) and serves: a handle for the calls below (the bound port in *port), or
// null with the reason in `error`. TLS when cert and key are non-empty (with a client CA: mutual TLS).
void* ntmf_start(const char* listen, int window, int max_message_bytes, const char* cert, const char* key,
                 const char* client_ca, int* port, char* error, long error_cap) {
  std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials();
  if (cert[0] != '\0') {
    grpc::SslServerCredentialsOptions ssl;
    try {
      ssl.pem_key_cert_pairs.push_back({ReadFile(key), ReadFile(cert)});
      if (client_ca[0] != '\0') {
        ssl.pem_root_certs = ReadFile(client_ca);
        ssl.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
      }
    } catch (const std::exception& err) {
      Fail(error, error_cap, err.what());
      return nullptr;
    }
    credentials = grpc::SslServerCredentials(ssl);
  }
  auto f = std::make_unique<Front>();
  f->service = std::make_unique<Service>(&f->events, &f->streams, static_cast<size_t>(window));
  *port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort(listen, credentials, port);
  builder.RegisterCallbackGenericService(f->service.get());
  builder.SetMaxReceiveMessageSize(max_message_bytes);
  builder.SetMaxSendMessageSize(max_message_bytes);
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);  // a taken port is an error, not a shared port
  f->server = builder.BuildAndStart();
  if (!f->server || *port == 0) {
    Fail(error, error_cap, std::string("cannot bind ") + listen);
    return nullptr;
  }
  return f.release();
}

// The next event (blocks: call it without holding Python's GIL): see Events::Next.
long ntmf_next(void* f, char* buf, long cap, int* kind, uint64_t* stream, uint64_t* seq) {
  return static_cast<Front*>(f)->events.Next(buf, cap, kind, stream, seq);
}

// The stream may be read (after its kOpen event). 0, or -1 when the stream has ended.
int ntmf_accept(void* f, uint64_t stream) {
  return static_cast<Front*>(f)->streams.With(stream, [](Stream* s) { s->Accept(); }) ? 0 : -1;
}

// The response to request `seq` of `stream`; written in request order. 0, or -1 when the stream has ended.
int ntmf_reply(void* f, uint64_t stream, uint64_t seq, const char* data, long length) {
  std::string bytes(data, static_cast<size_t>(length));
  return static_cast<Front*>(f)->streams.With(stream, [&](Stream* s) { s->Reply(seq, std::move(bytes)); }) ? 0 : -1;
}

// End the stream now with status `code` and `message`.
int ntmf_finish(void* f, uint64_t stream, int code, const char* message) {
  grpc::Status status(static_cast<grpc::StatusCode>(code), message);
  return static_cast<Front*>(f)->streams.With(stream, [&](Stream* s) { s->End(status); }) ? 0 : -1;
}

// Read no more; each stream ends UNAVAILABLE once every request it read is answered; kDrained when none is left.
void ntmf_drain(void* f) {
  static_cast<Front*>(f)->streams.Drain([](Stream* s) { s->Drain(); });
}

// Stop serving (streams still open end, UNAVAILABLE) and queue kStopped, which ends the consumer's loop.
void ntmf_stop(void* f, int grace_ms) {
  auto* front = static_cast<Front*>(f);
  front->server->Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(grace_ms));
  front->server->Wait();
  front->events.Push(kStopped, 0, 0, "");
}

// After ntmf_stop, once the consumer has seen kStopped: release everything.
void ntmf_free(void* f) { delete static_cast<Front*>(f); }

}  // extern "C"
#pragma GCC visibility pop
