package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"regexp"
	"runtime"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"

	"github.com/spillwayhq/spillway/spool"
)

// Spool is what the proxy needs of the spool. It is declared here so that
// the proxy's tests run against a fake and never open Badger.
type Spool interface {
	// Submit puts events and dead letters in one commit and returns a
	// channel that receives nil once they are durable, or why not. It
	// keeps nothing of the slices it is given once it returns.
	Submit(events []spool.Event, dead []spool.DeadLetter) (<-chan error, error)
	// Ready is nil while Submit would accept events.
	Ready() error
}

// DeadLetterStore is the spool's dead-letter API, served under /admin/dlq.
type DeadLetterStore interface {
	DeadLetters(f spool.Filter, fn func(spool.DeadLetter) error) error
	Replay(ctx context.Context, f spool.Filter) (int, error)
	Purge(f spool.Filter) (int, error)
}

// Options are the optional parts served on the proxy's listener.
type Options struct {
	// Metrics serves GET /metrics. Nil serves no /metrics.
	Metrics fasthttp.RequestHandler
	// Status is marshalled as JSON at GET /admin/status. Nil serves no
	// /admin/status.
	Status func() any
	// DLQ serves /admin/dlq, /admin/dlq/replay and /admin/dlq/purge. Nil
	// serves none of them.
	DLQ DeadLetterStore
	// Route returns which events the named destination receives, for
	// GET /admin/events?destination=; nil for an unknown name. The filter
	// it returns is used by one request only. Nil Route knows no names.
	Route func(destination string) func(event []byte) bool
}

const (
	// retryAfter is what a 503 asks SDKs to wait, in seconds. A full spool
	// or a restart takes seconds to clear, not milliseconds.
	retryAfter = "5"
	// bodySlack lets fasthttp read bodies a little over MaxRequestBytes so
	// that they get our own 400 rather than fasthttp's refusal.
	bodySlack = 64 << 10
	// maxPooledOut bounds the output buffer kept in the pool between
	// requests, in multiples of MaxRequestBytes.
	maxPooledOut = 4
	// maxPooledNumber bounds the number buffer kept in the pool: a number
	// in range has at most a few hundred digits.
	maxPooledNumber = 1 << 10
)

var successBody = []byte(`{"success":true}`)

// Server is the HTTP surface of spillway. Its zero value is not usable;
// call New.
type Server struct {
	cfg     Config
	sp      Spool
	opts    Options
	log     *slog.Logger
	m       *metrics
	pp      *parser
	srv     *fasthttp.Server
	ingest  sync.Pool
	parsing chan struct{} // one token per request being parsed; GOMAXPROCS of them

	adminSrv *fasthttp.Server
	// adminMoved is set by ServeAdmin: from then on the main listener no
	// longer serves /metrics and /admin/*.
	adminMoved atomic.Bool

	// certs is the TLS certificate of the main listener; nil serves
	// plain HTTP.
	certs *certStore

	closing atomic.Bool
	// served holds the listeners Serve and ServeAdmin were given, and
	// stopped is set by Shutdown: see serveOn.
	lnMu    sync.Mutex
	served  []net.Listener
	stopped bool
	// admitted counts the event requests past the closing check, whose
	// events may be on their way into the spool.
	admitted atomic.Int64
	// tail holds the latest events received, while someone watches.
	tail tailRing

	errRequestTooLarge error
	now                func() time.Time
}

// New checks cfg and builds a Server. Metrics are registered on reg; a nil
// reg keeps them unregistered. A nil logger discards.
func New(cfg Config, sp Spool, opts Options, logger *slog.Logger, reg prometheus.Registerer) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if sp == nil {
		return nil, errors.New("proxy: nil spool")
	}
	keys, err := acceptedKeys(cfg)
	if err != nil {
		return nil, err
	}
	var certs *certStore
	if cfg.TLSCertFile != "" {
		if certs, err = newCertStore(cfg.TLSCertFile, cfg.TLSKeyFile); err != nil {
			return nil, err
		}
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	s := &Server{
		cfg:   cfg,
		sp:    sp,
		opts:  opts,
		log:   logger.With(slog.String(logKeyComponent, "proxy")),
		m:     m,
		pp:    newParser(cfg, newKeyring(keys)),
		certs: certs,
		errRequestTooLarge: badRequest(errTooLarge,
			fmt.Sprintf("request body is over --max-request-bytes (%d bytes)", cfg.MaxRequestBytes)),
		now:     time.Now,
		parsing: make(chan struct{}, runtime.GOMAXPROCS(0)),
	}
	s.ingest.New = func() any { return newIngest() }
	s.srv = s.newHTTPServer(s.handle, cfg.MaxRequestBytes+bodySlack)
	// Admin requests carry no bodies worth the name.
	s.adminSrv = s.newHTTPServer(s.handleAdmin, 64<<10)
	return s, nil
}

func (s *Server) newHTTPServer(h fasthttp.RequestHandler, maxBody int) *fasthttp.Server {
	orDefault := func(d, def time.Duration) time.Duration {
		if d == 0 {
			return def
		}
		return d
	}
	maxConns := s.cfg.MaxConns
	if maxConns == 0 {
		maxConns = DefaultMaxConns
	}
	return &fasthttp.Server{
		Handler:      h,
		ErrorHandler: s.handleConnError,
		Logger:       fasthttpLogger{s.log},
		// Bounded reads and idle waits keep a slow or vanished client from
		// holding a connection (see DefaultReadTimeout, DefaultIdleTimeout).
		ReadTimeout:  orDefault(s.cfg.ReadTimeout, DefaultReadTimeout),
		WriteTimeout: 30 * time.Second,
		IdleTimeout:  orDefault(s.cfg.IdleTimeout, DefaultIdleTimeout),
		// Every connection, idle or not, holds a goroutine: past the cap a
		// new one gets 503 and is closed at once.
		Concurrency: maxConns,
		// A header that does not fit is answered 431 (handleConnError).
		ReadBufferSize: 8 << 10,
		// fasthttp's own log lines would otherwise quote the request that
		// failed to parse, Authorization header and write key included.
		SecureErrorLogMessage: true,
		// An idle keep-alive connection gives its read and write buffers
		// and request context back to the pools: thousands of idle
		// connections then cost little more than their goroutines.
		ReduceMemoryUsage:            true,
		MaxRequestBodySize:           maxBody,
		DisablePreParseMultipartForm: true,
		NoDefaultServerHeader:        true,
		NoDefaultContentType:         true,
		CloseOnShutdown:              true,
	}
}

// Handler returns the Server's request handler, for tests and for serving
// on a listener the caller manages.
func (s *Server) Handler() fasthttp.RequestHandler { return s.handle }

// Serve accepts connections on ln until Shutdown, over TLS when
// Config.TLSCertFile is set.
func (s *Server) Serve(ln net.Listener) error {
	if s.certs != nil {
		// The handshake happens on the connection's first read, under
		// ReadTimeout, so a client stalling it is cut off like any other.
		ln = tls.NewListener(ln, s.certs.config())
	}
	if err := s.serveOn(s.srv, ln); err != nil {
		return fmt.Errorf("serve http: %w", err)
	}
	return nil
}

// serveOn serves ln with srv until Shutdown, whichever of the two is called
// first. fasthttp's Shutdown passes over a listener its Serve has not yet
// taken, and that Serve then accepted connections for ever: a Shutdown
// right after the server started (a test, a signal at start-up) never saw
// Serve return.
func (s *Server) serveOn(srv *fasthttp.Server, ln net.Listener) error {
	s.lnMu.Lock()
	if s.stopped {
		s.lnMu.Unlock()
		_ = ln.Close()
		return nil
	}
	s.served = append(s.served, ln)
	s.lnMu.Unlock()
	return srv.Serve(ln)
}

// ServeAdmin serves /healthz, /readyz, /metrics and /admin/* on ln until
// Shutdown (--admin-listen), and stops serving /metrics and /admin/* on the
// main listener. /healthz and /readyz stay on both, since probes and load
// balancers ask the port that takes events.
func (s *Server) ServeAdmin(ln net.Listener) error {
	s.adminMoved.Store(true)
	if err := s.serveOn(s.adminSrv, ln); err != nil {
		return fmt.Errorf("serve admin http: %w", err)
	}
	return nil
}

// BeginShutdown makes /readyz and every event endpoint answer 503 with
// Retry-After, so SDKs keep their events and load balancers stop sending,
// while requests in flight finish. It is the first step of shutdown; the
// listeners stay open, answering, until Shutdown.
func (s *Server) BeginShutdown() {
	if !s.closing.Swap(true) {
		s.log.LogAttrs(context.Background(), slog.LevelInfo, "stopped taking events")
	}
}

// admittedPoll is how often WaitAdmitted looks again: the requests it
// waits for end with a commit, within milliseconds.
const admittedPoll = time.Millisecond

// WaitAdmitted waits until every event request admitted before
// BeginShutdown has been answered, so that all their events are in the
// spool (or refused), or until ctx is done.
func (s *Server) WaitAdmitted(ctx context.Context) error {
	tick := time.NewTicker(admittedPoll)
	defer tick.Stop()
	for s.admitted.Load() > 0 {
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d event requests still unanswered: %w", s.admitted.Load(), ctx.Err())
		case <-tick.C:
		}
	}
	return nil
}

// Shutdown begins shutdown if needed, closes the listeners, then waits
// until every request in flight has been answered or ctx is done.
func (s *Server) Shutdown(ctx context.Context) error {
	s.BeginShutdown()
	var errs []error
	if err := s.srv.ShutdownWithContext(ctx); err != nil {
		errs = append(errs, fmt.Errorf("shut down http server: %w", err))
	}
	if err := s.adminSrv.ShutdownWithContext(ctx); err != nil {
		errs = append(errs, fmt.Errorf("shut down admin http server: %w", err))
	}
	// What fasthttp closed already only answers an error here.
	s.lnMu.Lock()
	s.stopped = true
	for _, ln := range s.served {
		_ = ln.Close()
	}
	s.lnMu.Unlock()
	return errors.Join(errs...)
}

func (s *Server) handle(ctx *fasthttp.RequestCtx) {
	defer s.recoverPanic(ctx)
	if ep, ok := route(ctx.Path()); ok {
		s.handleEvents(ctx, ep)
		return
	}
	if string(ctx.Path()) == clientMetricsPath {
		acceptClientMetrics(ctx)
		return
	}
	s.serveAdmin(ctx, !s.adminMoved.Load())
}

// clientMetricsPath is where analytics.js posts its own telemetry, beside
// the tracking paths on the same apiHost. Its counters describe the
// library, not the app's users, and Segment keeps them; a sidecar has no
// one to give them to.
const clientMetricsPath = "/v1/m"

// acceptClientMetrics answers analytics.js's telemetry with success and
// drops it. Answered 404 without CORS headers, every page left open for
// its 30 s flush logged a console error in the browser.
func acceptClientMetrics(ctx *fasthttp.RequestCtx) {
	setCORS(ctx)
	switch {
	case ctx.IsPost():
		ctx.SetContentType("application/json")
		ctx.SetBody(successBody)
	case ctx.IsOptions():
		preflight(ctx)
	default:
		ctx.Response.Header.Set(fasthttp.HeaderAllow, "POST, OPTIONS")
		writeError(ctx, errMethodNotAllowed)
	}
}

// handleAdmin serves the admin listener: everything but events.
func (s *Server) handleAdmin(ctx *fasthttp.RequestCtx) {
	defer s.recoverPanic(ctx)
	s.serveAdmin(ctx, true)
}

// serveAdmin serves the non-event paths; with all false, only the probes.
func (s *Server) serveAdmin(ctx *fasthttp.RequestCtx, all bool) {
	path := string(ctx.Path())
	if !all && path != "/healthz" && path != "/readyz" {
		writeError(ctx, errNotFound)
		return
	}
	switch path {
	case "/healthz":
		if onlyGet(ctx) {
			ctx.SetContentType("text/plain; charset=utf-8")
			ctx.SetBodyString("ok\n")
		}
	case "/readyz":
		s.handleReady(ctx)
	case "/metrics":
		if s.opts.Metrics == nil {
			writeError(ctx, errNotFound)
		} else if onlyGet(ctx) {
			s.opts.Metrics(ctx)
		}
	case "/admin/status":
		s.handleStatus(ctx)
	case "/admin/events":
		s.handleTail(ctx)
	case "/ui":
		s.handleUI(ctx)
	case "/admin/dlq":
		s.handleDLQList(ctx)
	case "/admin/dlq/replay":
		s.handleDLQChange(ctx, "replay")
	case "/admin/dlq/purge":
		s.handleDLQChange(ctx, "purge")
	default:
		writeError(ctx, errNotFound)
	}
}

// recoverPanic keeps a bug in one request from taking down the sidecar,
// and with it every other app request.
func (s *Server) recoverPanic(ctx *fasthttp.RequestCtx) {
	if r := recover(); r != nil {
		s.log.LogAttrs(context.Background(), slog.LevelError, "handler panic",
			slog.String(logKeyPath, string(ctx.Path())),
			slog.Any(logKeyPanic, r), slog.String(logKeyStack, string(debug.Stack())))
		ctx.Response.ResetBody()
		writeError(ctx, fmt.Errorf("panic: %v", r))
	}
}

func (s *Server) handleEvents(ctx *fasthttp.RequestCtx, ep endpoint) {
	setCORS(ctx)
	switch {
	case ctx.IsPost():
	case ctx.IsOptions():
		preflight(ctx)
		return
	default:
		ctx.Response.Header.Set(fasthttp.HeaderAllow, "POST, OPTIONS")
		s.failEvents(ctx, ep, errMethodNotAllowed)
		return
	}
	start := time.Now()
	s.ingestRequest(ctx, ep)
	s.m.duration[ep].Observe(time.Since(start).Seconds())
}

func (s *Server) ingestRequest(ctx *fasthttp.RequestCtx, ep endpoint) {
	// Counted before the check: a request that finds shutdown not begun
	// is then seen by WaitAdmitted.
	s.admitted.Add(1)
	defer s.admitted.Add(-1)
	if s.closing.Load() {
		s.failEvents(ctx, ep, errShuttingDown)
		return
	}
	in, done, err := s.parseAndSubmit(ctx, ep)
	defer func() {
		if in != nil {
			s.putIngest(in)
		}
	}()
	if err != nil {
		s.failEvents(ctx, ep, err)
		return
	}
	received := len(in.events) + len(in.dead)
	if len(in.rejected) == 0 && !s.tail.watched(s.now()) {
		// The spool has its copy: the buffers serve other requests while
		// this one waits out the commit. At 64 connections of 100-event
		// batches they were a fifth of the live heap.
		s.putIngest(in)
		in = nil
	}
	// Not cancelled with the request: fasthttp cancels every RequestCtx
	// when shutdown begins, and a client whose events are being stored
	// must get the truth (200), not a 503 that makes it send them again.
	if err := <-done; err != nil {
		s.failEvents(ctx, ep, err)
		return
	}
	s.m.received[ep].Add(float64(received))
	ctx.SetContentType("application/json")
	if in == nil {
		ctx.SetBody(successBody)
		return
	}
	s.tail.record(ep, s.now(), in.events, in.dead, in.rejected)
	if len(in.rejected) == 0 {
		ctx.SetBody(successBody)
		return
	}
	s.countRejected(in)
	b := append(in.scratch[:0], `{"success":true,"rejected":[`...)
	for i, r := range in.rejected {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"index":`...)
		b = strconv.AppendInt(b, int64(r.index), 10)
		b = append(b, `,"reason":`...)
		b = appendString(b, []byte(r.rule.String()))
		b = append(b, '}')
	}
	in.scratch = append(b, ']', '}')
	ctx.SetBody(in.scratch)
}

// parseAndSubmit reads, parses and enriches the request into an ingest
// and hands its events to the spool. Parsing is CPU work: more of it at
// once than there are cores only holds more bodies, parsers and output
// buffers in memory, which with many connections made memory grow with
// their number. The ingest is taken once parsing may start: taken before,
// each waiting request held one, and its buffers, 5 MB at 64 connections.
func (s *Server) parseAndSubmit(ctx *fasthttp.RequestCtx, ep endpoint) (*ingest, <-chan error, error) {
	s.parsing <- struct{}{}
	defer func() { <-s.parsing }()
	in := s.ingest.Get().(*ingest)
	body, err := in.readBody(ctx, s.cfg.MaxRequestBytes, s.errRequestTooLarge)
	if err == nil {
		key := basicUser(ctx.Request.Header.Peek(fasthttp.HeaderAuthorization), in.auth[:])
		err = s.pp.parse(in, ep, body, key, s.now())
	}
	if err == nil && s.cfg.Strict && len(in.rejected) > 0 {
		s.countRejected(in)
		r := in.rejected[0]
		err = badRequest(errInvalidEvent, fmt.Sprintf("event %d: %s", r.index, r.rule.String()))
	}
	if err != nil {
		return in, nil, err
	}
	// Everything stored is in in.out now. The body's buffer goes back to
	// fasthttp's pool for other connections instead of waiting out the
	// commit: at 64 connections of 100-event batches that is 5 MB.
	ctx.Request.ResetBody()
	done, err := s.sp.Submit(in.events, in.dead)
	return in, done, err
}

func (s *Server) countRejected(in *ingest) {
	for _, r := range in.rejected {
		s.m.rejected[r.rule].Inc()
	}
}

func (s *Server) putIngest(in *ingest) {
	in.reset()
	// A rare huge request must not pin its buffers in the pool forever.
	if cap(in.out) > maxPooledOut*s.cfg.MaxRequestBytes {
		in.out = nil
	}
	if cap(in.scratch) > maxPooledOut*s.cfg.MaxRequestBytes {
		in.scratch = nil
	}
	if cap(in.numText) > maxPooledNumber {
		in.numText = nil // a hostile number, refused
	}
	s.ingest.Put(in)
}

// failEvents answers an event request with err and counts it. Only errors
// the operator must act on are logged: client mistakes are counted, and a
// full spool is reported by the spool itself.
func (s *Server) failEvents(ctx *fasthttp.RequestCtx, ep endpoint, err error) {
	status, code := statusFor(err)
	s.m.errors[code].Inc()
	if status == fasthttp.StatusInternalServerError {
		s.log.LogAttrs(context.Background(), slog.LevelError, "store events",
			slog.String(logKeyEndpoint, ep.String()), slog.Any(logKeyErr, err))
	}
	if errors.Is(err, errShuttingDown) {
		ctx.SetConnectionClose()
	}
	writeError(ctx, err)
}

func (s *Server) handleReady(ctx *fasthttp.RequestCtx) {
	if !onlyGet(ctx) {
		return
	}
	ctx.SetContentType("text/plain; charset=utf-8")
	reason := ""
	if s.closing.Load() {
		reason = "shutting down"
	} else if err := s.sp.Ready(); err != nil {
		reason = err.Error()
	}
	if reason == "" {
		ctx.SetBodyString("ok\n")
		return
	}
	ctx.SetStatusCode(fasthttp.StatusServiceUnavailable)
	ctx.Response.Header.Set(fasthttp.HeaderRetryAfter, retryAfter)
	ctx.SetBodyString("not ready: " + reason + "\n")
}

// handleConnError answers requests fasthttp refused before our handler saw
// them. A body far over the limit lands here: it gets the same 400 JSON as
// one slightly over, though fasthttp then closes the connection without
// reading the body, so a client still sending may see a reset instead.
func (s *Server) handleConnError(ctx *fasthttp.RequestCtx, err error) {
	var small *fasthttp.ErrSmallBuffer
	var netErr *net.OpError
	switch {
	case errors.Is(err, fasthttp.ErrBodyTooLarge):
		setCORS(ctx)
		s.m.errors["too_large"].Inc()
		writeError(ctx, s.errRequestTooLarge)
	case errors.As(err, &small):
		ctx.Error("Too big request header", fasthttp.StatusRequestHeaderFieldsTooLarge)
	case errors.As(err, &netErr) && netErr.Timeout():
		ctx.Error("Request timeout", fasthttp.StatusRequestTimeout)
	default:
		ctx.Error("Error when parsing request", fasthttp.StatusBadRequest)
	}
}

// writeError answers with err's status and the Segment error shape.
func writeError(ctx *fasthttp.RequestCtx, err error) {
	status, code := statusFor(err)
	ctx.SetStatusCode(status)
	if status == fasthttp.StatusServiceUnavailable {
		ctx.Response.Header.Set(fasthttp.HeaderRetryAfter, retryAfter)
	}
	ctx.SetContentType("application/json")
	b := make([]byte, 0, 128)
	b = append(b, `{"success":false,"code":`...)
	b = appendString(b, []byte(code))
	b = append(b, `,"message":`...)
	b = appendString(b, []byte(messageFor(err)))
	ctx.SetBody(append(b, '}'))
}

// onlyGet answers 405 unless the request is a GET or HEAD.
func onlyGet(ctx *fasthttp.RequestCtx) bool {
	if ctx.IsGet() || ctx.IsHead() {
		return true
	}
	ctx.Response.Header.Set(fasthttp.HeaderAllow, "GET, HEAD")
	writeError(ctx, errMethodNotAllowed)
	return false
}

// onlyPost answers 405 unless the request is a POST.
func onlyPost(ctx *fasthttp.RequestCtx) bool {
	if ctx.IsPost() {
		return true
	}
	ctx.Response.Header.Set(fasthttp.HeaderAllow, "POST")
	writeError(ctx, errMethodNotAllowed)
	return false
}

// setCORS lets browsers (analytics.js) read our answers. Segment's API
// echoes the Origin with credentials allowed; so do we.
func setCORS(ctx *fasthttp.RequestCtx) {
	h := &ctx.Response.Header
	if origin := ctx.Request.Header.Peek(fasthttp.HeaderOrigin); len(origin) > 0 {
		h.SetBytesV(fasthttp.HeaderAccessControlAllowOrigin, origin)
		h.Set(fasthttp.HeaderAccessControlAllowCredentials, "true")
		h.Set(fasthttp.HeaderVary, fasthttp.HeaderOrigin)
	} else {
		h.Set(fasthttp.HeaderAccessControlAllowOrigin, "*")
	}
}

func preflight(ctx *fasthttp.RequestCtx) {
	h := &ctx.Response.Header
	h.Set(fasthttp.HeaderAccessControlAllowMethods, "POST, OPTIONS")
	if req := ctx.Request.Header.Peek(fasthttp.HeaderAccessControlRequestHeaders); len(req) > 0 {
		h.SetBytesV(fasthttp.HeaderAccessControlAllowHeaders, req)
	} else {
		h.Set(fasthttp.HeaderAccessControlAllowHeaders, "Authorization, Content-Type, Content-Encoding")
	}
	h.Set(fasthttp.HeaderAccessControlMaxAge, "86400")
	ctx.SetStatusCode(fasthttp.StatusNoContent)
}

// Attribute keys, constant so that log queries can rely on them.
const (
	logKeyComponent = "component"
	logKeyEndpoint  = "endpoint"
	logKeyErr       = "err"
	logKeyPath      = "path"
	logKeyPanic     = "panic"
	logKeyStack     = "stack"
	logKeyAction    = "action"
	logKeyCount     = "count"
)

// fasthttpLogger sends fasthttp's own messages (connection errors, mostly
// caused by clients) to slog at Debug.
type fasthttpLogger struct{ log *slog.Logger }

func (l fasthttpLogger) Printf(format string, args ...any) {
	if l.log.Enabled(context.Background(), slog.LevelDebug) {
		l.log.LogAttrs(context.Background(), slog.LevelDebug, redactQuoted(fmt.Sprintf(format, args...)))
	}
}

// quotedRE matches a Go-quoted string, as fasthttp quotes what it read.
var quotedRE = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)

// redactQuoted replaces every quoted string of a fasthttp message but
// addresses with "…": even with SecureErrorLogMessage, fasthttp quotes the
// request line or headers it failed to parse, which may hold a write key.
func redactQuoted(msg string) string {
	return quotedRE.ReplaceAllStringFunc(msg, func(q string) string {
		if s, err := strconv.Unquote(q); err == nil {
			if _, port, err := net.SplitHostPort(s); err == nil {
				if _, err := strconv.Atoi(port); err == nil {
					return q
				}
			}
		}
		return `"…"`
	})
}
