package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime"
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
	// SubmitFrom puts events and dead letters in one commit and returns a
	// channel that receives nil once they are durable, or why not, and
	// how many events it skipped as already stored (their messageId was).
	// It keeps nothing of the slices it is given once it returns.
	SubmitFrom(source string, events []spool.Event, dead []spool.DeadLetter) (<-chan error, int, error)
	// Ready is nil while Submit would accept events.
	Ready() error
}

// DeadLetterStore is the spool's dead-letter API, served under /admin/dlq.
type DeadLetterStore interface {
	DeadLetters(f spool.Filter, fn func(spool.DeadLetter) error) error
	// ReplayChecked replays, after check lets each dead letter through.
	ReplayChecked(ctx context.Context, f spool.Filter, check func(*spool.DeadLetter) bool) (int, error)
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

// Server is the HTTP surface of spillway. Its zero value is not usable;
// call New.
type Server struct {
	cfg    Config
	sp     Spool
	opts   Options
	log    *slog.Logger
	m      *metrics
	pp     *parser
	srv    *fasthttp.Server
	ingest sync.Pool
	// answers holds the success bodies that list rejected events, rendered
	// before the commit so that the request's ingest need not wait it out.
	answers sync.Pool
	parsing chan struct{} // one token per request being parsed; GOMAXPROCS of them
	// slowBodies counts the requests whose body took longer than bodyStall
	// to arrive: each handed its parse token on meanwhile.
	slowBodies atomic.Int64

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
	rules, err := cfg.privacyRules()
	if err != nil {
		return nil, err
	}
	ps, err := cfg.loadPlan()
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
		pp:    newParser(cfg, newKeyring(keys), rules),
		certs: certs,
		errRequestTooLarge: badRequest(errTooLarge,
			fmt.Sprintf("request body is over --max-request-bytes (%d bytes)", cfg.MaxRequestBytes)),
		now:     time.Now,
		parsing: make(chan struct{}, runtime.GOMAXPROCS(0)),
	}
	s.ingest.New = func() any { return newIngest() }
	s.answers.New = func() any { return new([]byte) }
	s.setPlan(ps)
	s.srv = s.newHTTPServer(s.handle, cfg.MaxRequestBytes)
	// Bodies are read by the handler once it may parse them (takeBody).
	s.srv.StreamRequestBody = true
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
