package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	_ "net/http/pprof" // served only with --pprof-listen
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"

	"github.com/spillwayhq/spillway/forwarders"
	"github.com/spillwayhq/spillway/proxy"
	"github.com/spillwayhq/spillway/sources"
	"github.com/spillwayhq/spillway/spool"
)

const (
	defaultListen          = "127.0.0.1:8080"
	defaultShutdownTimeout = 25 * time.Second
	// spoolCloseTimeout bounds closing the spool after the drain. It takes
	// milliseconds on a working disk; on one that no longer takes writes it
	// would never end, and exiting without it is as safe as a crash. With
	// the default drain it fits Kubernetes' default 30 s grace period.
	spoolCloseTimeout = 5 * time.Second
	// hurriedCloseTimeout is spoolCloseTimeout after a second signal: still
	// ample for a working disk, short for whoever is waiting on a stuck one.
	hurriedCloseTimeout = time.Second
	// sourceStopTimeout bounds the commit of the sources' offsets at
	// shutdown, so that an unreachable cluster leaves the destinations
	// most of --shutdown-timeout to drain; what it does not commit is read
	// again by the partitions' next owner.
	sourceStopTimeout = 5 * time.Second
)

// serverConfig is everything the server's flags say.
type serverConfig struct {
	listen, adminListen string
	pprofListen         string
	logFormat, logLevel string
	shutdownTimeout     time.Duration
	syncMode, whenFull  string
	destinations        stringList
	sourceSpecs         stringList
	sources             []sources.Source
	spool               spool.Config
	proxy               proxy.Config
	defaults            forwarders.Defaults
}

func serverFlags(stderr io.Writer) (*flag.FlagSet, *serverConfig) {
	c := &serverConfig{}
	fs := flag.NewFlagSet("spillway run", flag.ContinueOnError)
	fs.SetOutput(stderr)

	fs.StringVar(&c.listen, "listen", defaultListen, "address for the Segment-compatible API (and the admin endpoints, unless --admin-listen); '' turns it off, for a relay that only consumes --source")
	fs.StringVar(&c.pprofListen, "pprof-listen", "", "address for Go's pprof profiling endpoints (default: off); keep it on loopback")
	fs.StringVar(&c.adminListen, "admin-listen", "", "separate address for /metrics, /healthz, /readyz and /admin (default: the main listener)")
	fs.StringVar(&c.logFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(&c.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.DurationVar(&c.shutdownTimeout, "shutdown-timeout", defaultShutdownTimeout, "how long destinations may drain after SIGTERM")

	fs.StringVar(&c.spool.Dir, "spool-dir", spool.DefaultDir, "spool directory")
	fs.StringVar(&c.syncMode, "sync", "always", "always: fsync before answering 200 (survives power loss); interval: fsync every --sync-interval (survives a process crash)")
	fs.DurationVar(&c.spool.SyncInterval, "sync-interval", spool.DefaultSyncInterval, "fsync period with --sync=interval")
	c.spool.MaxBytes = spool.DefaultMaxBytes
	fs.Var((*byteSize)(&c.spool.MaxBytes), "spool-max-bytes", "bound on the spool's size on disk: at least 4MiB, or 0 for no bound")
	fs.StringVar(&c.whenFull, "when-full", "block", "beyond --spool-max-bytes: block (answer 503) or drop-oldest (drop the oldest undelivered events, counted)")
	dedupeFlags(fs, c)

	fs.Var(&c.destinations, "destination", "NAME=URL, repeatable; none means stdout://")
	fs.Var(&c.sourceSpecs, "source", "[NAME=]kafka://BROKERS/TOPIC?group=GROUP, repeatable: consume the topic a Kafka destination writes, as a member of the consumer group")
	fs.Var((*stringList)(&c.proxy.WriteKeys), "write-key", "accepted write key, repeatable; none means any key is accepted")
	fs.BoolVar(&c.proxy.Strict, "strict", false, "answer 400 to a request holding a spec-invalid event, storing nothing of it")
	fs.StringVar(&c.proxy.AdminToken, "admin-token", "", "bearer token that admin requests reading events or dead letters need from another host or through a reverse proxy")
	fs.StringVar(&c.proxy.WriteKeyFile, "write-key-file", "", "file of accepted write keys, one a line (# comments), added to --write-key; reread on SIGHUP")
	fs.StringVar(&c.proxy.TLSCertFile, "tls-cert", "", "PEM certificate chain: serve HTTPS on --listen (with --tls-key); reread on SIGHUP")
	fs.StringVar(&c.proxy.TLSKeyFile, "tls-key", "", "PEM private key of --tls-cert")
	fs.IntVar(&c.proxy.MaxConns, "max-conns", proxy.DefaultMaxConns, "most connections served at once, idle keep-alive ones included; past it a new one gets 503 (over HTTPS: is closed)")
	c.proxy.MaxEventBytes = proxy.DefaultMaxEventBytes
	c.proxy.MaxRequestBytes = proxy.DefaultMaxRequestBytes
	fs.Var((*intSize)(&c.proxy.MaxEventBytes), "max-event-bytes", "largest event accepted")
	fs.Var((*intSize)(&c.proxy.MaxRequestBytes), "max-request-bytes", "largest request body accepted, after decompression")
	fs.IntVar(&c.proxy.MaxBatchEvents, "max-batch-events", proxy.DefaultMaxBatchEvents, "most events accepted in one batch")
	contractFlags(fs, c)

	d := &c.defaults
	*d = forwarders.Defaults{
		BatchEvents: forwarders.DefaultBatchEvents, BatchBytes: forwarders.DefaultBatchBytes,
		Flush: forwarders.DefaultFlush, Concurrency: forwarders.DefaultConcurrency, Timeout: forwarders.DefaultTimeout,
		BackoffMin: forwarders.DefaultBackoffMin, BackoffMax: forwarders.DefaultBackoffMax, MaxAge: forwarders.DefaultMaxAge,
	}
	fs.IntVar(&d.BatchEvents, "batch-max-events", d.BatchEvents, "most events in one delivery (per destination: ?batch_events=)")
	fs.Var((*intSize)(&d.BatchBytes), "batch-max-bytes", "largest delivery body (per destination: ?batch_bytes=)")
	fs.DurationVar(&d.Flush, "flush-interval", d.Flush, "longest wait before a partial batch goes (per destination: ?flush=)")
	fs.IntVar(&d.Concurrency, "concurrency", d.Concurrency, "deliveries in flight per destination (per destination: ?concurrency=)")
	fs.DurationVar(&d.Timeout, "request-timeout", d.Timeout, "timeout of one delivery request (per destination: ?timeout=)")
	fs.DurationVar(&d.BackoffMin, "backoff-min", d.BackoffMin, "first retry delay (per destination: ?backoff_min=)")
	fs.DurationVar(&d.BackoffMax, "backoff-max", d.BackoffMax, "longest retry delay (per destination: ?backoff_max=)")
	fs.DurationVar(&d.MaxAge, "max-age", d.MaxAge, "undelivered events older than this are dead-lettered as expired (per destination: ?max_age=)")
	return fs, c
}

// intSize is a byteSize for int fields. Like flag.IntVar, it refuses what
// an int may not hold on every platform; each setting's own range is
// checked by the package that owns it.
type intSize int

var _ flag.Value = (*intSize)(nil)

func (i *intSize) String() string { b := byteSize(*i); return b.String() }
func (i *intSize) Set(s string) error {
	var b byteSize
	if err := b.Set(s); err != nil {
		return err
	}
	if b > math.MaxInt32 {
		return fmt.Errorf("size %q is too large", s)
	}
	*i = intSize(b)
	return nil
}

func newLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %q is not debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format: %q is not text or json", format)
}

// configure parses and validates the server's flags into the packages'
// configurations, before anything is opened. Every error names the flag at
// fault.
func configure(args []string, stderr io.Writer) (*serverConfig, []forwarders.Destination, *slog.Logger, error) {
	fs, c := serverFlags(stderr)
	if err := parseFlags(fs, args); err != nil {
		return nil, nil, nil, err
	}
	logger, err := newLogger(stderr, c.logFormat, c.logLevel)
	if err != nil {
		return nil, nil, nil, err
	}
	if err := c.check(); err != nil {
		return nil, nil, nil, err
	}
	specs := c.destinations
	if len(specs) == 0 {
		specs = stringList{"stdout=stdout://"}
	}
	// The error names the destination, never its URL, which may hold a
	// password or a write key.
	dests, err := forwarders.ParseDestinations(specs, c.defaults)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("--destination: %w", err)
	}
	for _, d := range dests {
		c.spool.Consumers = append(c.spool.Consumers, d.Name)
	}
	if c.sources, err = sources.ParseSources(c.sourceSpecs); err != nil {
		return nil, nil, nil, fmt.Errorf("--source: %w", err)
	}
	if c.listen == "" && len(c.sources) == 0 {
		return nil, nil, nil, errors.New("--listen '' turns off the HTTP API, the only way to take events without a --source")
	}
	if err := configureContracts(c, dests); err != nil {
		return nil, nil, nil, err
	}
	return c, dests, logger, nil
}

// check reads the flags that name a choice, and has every value checked
// by the package that owns it, reporting as many mistakes as it can at
// once.
func (c *serverConfig) check() error {
	var err error
	if c.spool.Sync, err = spool.ParseSyncMode(c.syncMode); err != nil {
		return fmt.Errorf("--sync: %w", err)
	}
	if c.spool.WhenFull, err = spool.ParseWhenFull(c.whenFull); err != nil {
		return fmt.Errorf("--when-full: %w", err)
	}
	if c.shutdownTimeout <= 0 {
		return errors.New("--shutdown-timeout must be > 0")
	}
	errs := []error{c.spool.ValidateFlags(), c.defaults.ValidateFlags(), c.proxy.ValidateFlags()}
	for _, a := range []struct{ flag, addr string }{
		{"listen", c.listen}, {"admin-listen", c.adminListen}, {"pprof-listen", c.pprofListen},
	} {
		if a.addr == "" {
			continue // off; configure checks that a spillway without --listen has a --source
		}
		if err := checkAddr(a.addr); err != nil {
			errs = append(errs, fmt.Errorf("--%s %q: %w", a.flag, a.addr, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return c.proxy.CheckSecrets()
}

// defaultMemoryLimit is GOMEMLIMIT unless the environment sets it: the
// 64 MiB that spillway keeps to at full load, less the binary's pages and
// the value log pages not yet released, which the kernel counts but the
// Go runtime does not. At 40 MiB, with the logs' pages kept, the live
// heap at W1 left the collector half a MiB of room: it ran 200 times a
// second, and W1 went at about half the rate it reaches now. At 48 MiB a
// backlog drained under live load (W4) peaked at 65 MiB.
const defaultMemoryLimit = 45 << 20

// relayMemoryLimit is GOMEMLIMIT's default for a spillway with a --source:
// it holds, besides a sidecar's memory, the fetches franz-go buffers ahead
// (decompressed, about 20 MiB from three brokers) and a poll of records.
// Under 40 MiB its collector ran nearly all the time: a relay took 0.27
// to 0.55 of spillway's HTTP rate at 4 to 5 times its CPU per event
// (docs/kafka.md).
const relayMemoryLimit = 128 << 20

func runServer(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	c, dests, logger, err := configure(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "spillway: %v\n", err)
		return 2
	}
	// Go kills a program writing to a closed pipe on fd 1 or 2 unless
	// SIGPIPE is handled. Ignored, the write fails with EPIPE instead, so
	// a stdout:// destination whose reader went away fails as any other
	// destination does: retried and reported, its events kept in the spool.
	signal.Ignore(syscall.SIGPIPE)
	// The spool holds events (personal data) and Badger creates its files
	// 0644: nothing spillway creates may be readable by other users.
	syscall.Umask(0o077)
	if c.pprofListen == "" {
		// Without the endpoints nobody reads heap profiles, and every
		// sampled allocation site stays in memory: half a MiB of an idle
		// sidecar's 16 after a burst.
		runtime.MemProfileRate = 0
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		// A sidecar is judged by its memory, and by its latency. A soft
		// limit with Go's default GOGC collects hard only as the heap
		// nears the limit, at full load: at half load it collects a
		// third as often as GOGC=25 did, each collection being time that
		// acknowledgements wait (p99 about 15% lower, BENCHMARKS.md). A
		// heap that needs more than the limit makes the collector run up
		// to half the CPU: such loads set GOMEMLIMIT.
		// The index's filters live outside the heap, within the same
		// 64 MiB.
		limit := defaultMemoryLimit - c.spool.DedupeFilterBytes()
		if len(c.sources) > 0 {
			limit = relayMemoryLimit
		}
		debug.SetMemoryLimit(limit)
	}
	if err := serve(ctx, c, dests, logger); err != nil {
		logger.Error("spillway stopped", "err", err)
		return 1
	}
	return 0
}

// server is the process's running parts, acquired in the order of the
// durability contract (nothing is answered 200 before the spool holds it)
// and released in the reverse, the spool last.
type server struct {
	c     *serverConfig
	dests []forwarders.Destination
	log   *slog.Logger

	spool   *spool.Spool
	group   *forwarders.Group
	sources *sources.Group
	proxy   *proxy.Server
	ln      net.Listener
	adminLn net.Listener // nil without --admin-listen
	pprof   *http.Server // nil without --pprof-listen
}

// serve runs the server until ctx ends or a signal arrives.
func serve(ctx context.Context, c *serverConfig, dests []forwarders.Destination, logger *slog.Logger) error {
	s := &server{c: c, dests: dests, log: logger}
	if err := s.acquire(); err != nil {
		s.release()
		return err
	}
	defer s.stopProfiling()
	signals := make(chan os.Signal, 2)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(signals)
	stopReload := s.reloadOnHangup()
	defer stopReload()

	runErr := s.wait(ctx, signals, s.start())
	if err := s.shutdown(ctx, signals); err != nil {
		return err
	}
	return runErr
}

// acquire opens the spool, builds the destinations and the HTTP server,
// and binds the listeners, so that a mistake fails before anything runs.
// What it acquired before a failure is left for release.
func (s *server) acquire() error {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	var err error
	if s.spool, err = spool.Open(s.c.spool, s.log, reg); err != nil {
		return err
	}
	if s.group, err = forwarders.New(s.dests, s.spool, s.log, reg); err != nil {
		return err
	}
	if s.sources, err = sources.New(s.c.sources, s.spool, s.log, reg); err != nil {
		return err
	}
	s.proxy, err = proxy.New(s.c.proxy, s.spool, proxy.Options{
		Metrics: fasthttpadaptor.NewFastHTTPHandler(promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg})),
		Status:  func() any { return s.group.Status() },
		DLQ:     s.spool,
		Route:   s.group.Route,
	}, s.log, reg)
	if err != nil {
		return err
	}
	if s.c.listen != "" {
		if s.ln, err = listen("listen", s.c.listen); err != nil {
			return err
		}
	}
	if s.c.adminListen != "" {
		if s.adminLn, err = listen("admin-listen", s.c.adminListen); err != nil {
			return err
		}
	}
	if s.c.pprofListen != "" {
		pprofLn, err := listen("pprof-listen", s.c.pprofListen)
		if err != nil {
			return err
		}
		s.pprof = &http.Server{Handler: http.DefaultServeMux, ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = s.pprof.Serve(pprofLn) }()
	}
	return nil
}

func listen(flag, addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--%s %s: %w", flag, addr, err)
	}
	return ln, nil
}

// release frees what acquire got before it failed, nothing having started.
func (s *server) release() {
	for _, ln := range []net.Listener{s.ln, s.adminLn} {
		if ln != nil {
			ln.Close()
		}
	}
	if s.sources != nil {
		// Never started: this only closes the Kafka clients.
		_ = s.sources.Stop(context.Background())
	}
	if s.group != nil {
		// Never started: this only closes the destinations' clients and files.
		_ = s.group.Shutdown(context.Background())
	}
	if s.spool != nil {
		_ = s.closeSpool(context.Background())
	}
}

func (s *server) stopProfiling() {
	if s.pprof != nil {
		s.pprof.Close()
	}
}

// reloadOnHangup rereads the secrets (--write-key-file, --tls-cert and
// --tls-key) at each SIGHUP, once Kubernetes has updated them; a failed
// reload keeps the old ones. It returns what stops it.
func (s *server) reloadOnHangup() (stop func()) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-hup:
				if err := s.proxy.Reload(); err != nil {
					s.log.Error("reload secrets failed; keeping the previous ones", "err", err)
				} else {
					s.log.Info("reloaded secrets")
				}
			case <-done:
				return
			}
		}
	}()
	return func() {
		signal.Stop(hup)
		close(done)
	}
}

// start starts delivering and serving. The channel it returns gets the
// error of a listener that stopped serving.
func (s *server) start() <-chan error {
	s.group.Start()
	s.sources.Start()
	serveErr := make(chan error, 2)
	listening := "off"
	if s.ln != nil {
		go func() { serveErr <- s.proxy.Serve(s.ln) }()
		listening = s.ln.Addr().String()
	}
	if s.adminLn != nil {
		go func() { serveErr <- s.proxy.ServeAdmin(s.adminLn) }()
	}
	names := make([]string, len(s.dests))
	for i, d := range s.dests {
		names[i] = d.Name + "=" + d.Kind
	}
	srcNames := make([]string, len(s.c.sources))
	for i, src := range s.c.sources {
		srcNames[i] = src.Name + "=" + src.Kind
	}
	s.log.Info("spillway started", "version", version, "listen", listening,
		"spool_dir", s.c.spool.Dir, "sync", s.c.spool.Sync.String(), "destinations", strings.Join(names, ","),
		"sources", strings.Join(srcNames, ","))
	return serveErr
}

// wait returns at the first signal, at the end of ctx, or when a listener
// fails, with that listener's error.
func (s *server) wait(ctx context.Context, signals <-chan os.Signal, serveErr <-chan error) error {
	select {
	case sig := <-signals:
		s.log.Info("shutting down", "signal", sig.String(), "timeout", s.c.shutdownTimeout)
	case <-ctx.Done():
		s.log.Info("shutting down", "reason", context.Cause(ctx))
	case err := <-serveErr:
		s.log.Error("listener failed", "err", err)
		return err
	}
	return nil
}

// shutdown stops taking events, lets the destinations drain for up to
// --shutdown-timeout, closes the listeners, and closes the spool last.
//
// A second signal abandons the drain at once: it is how an operator stops
// a drain that would take the whole --shutdown-timeout. The spool still
// closes, in milliseconds on a working disk, so the next start need not
// recover it as after a crash; only a stuck disk makes that close wait,
// and then hurriedCloseTimeout ends it.
func (s *server) shutdown(ctx context.Context, signals <-chan os.Signal) error {
	abandon, abandonDrain := context.WithCancel(context.WithoutCancel(ctx))
	defer abandonDrain()
	go func() {
		select {
		case sig := <-signals:
			s.log.Warn("second signal: abandoning the drain", "signal", sig.String(), "spool_close_limit", hurriedCloseTimeout)
			abandonDrain()
		case <-abandon.Done():
		}
	}()
	drainCtx, cancel := context.WithTimeout(abandon, s.c.shutdownTimeout)
	defer cancel()
	s.drain(drainCtx)
	s.log.Info("shutdown: closing spool")
	if err := s.closeSpool(abandon); err != nil {
		return err
	}
	s.log.Info("shutdown complete")
	return nil
}

// drain is shutdown up to the spool's close. The listeners stay open
// through it, answering new events 503 with Retry-After (SDKs keep them
// and retry) and serving /readyz and /metrics, so the drain can be watched.
func (s *server) drain(ctx context.Context) {
	s.log.Info("shutdown: refusing new events")
	s.proxy.BeginShutdown()
	s.stopSources(ctx)
	if err := s.proxy.WaitAdmitted(ctx); err != nil {
		s.log.Warn("shutdown: event requests still waiting for the spool", "err", err)
	}
	s.log.Info("shutdown: draining destinations")
	if err := s.group.Shutdown(ctx); err != nil {
		s.log.Warn("shutdown: destinations did not drain; the rest stays in the spool", "err", err)
	}
	// After a drain that took all its time this only closes the listeners:
	// what is still in flight is a 503 or an admin answer.
	if err := s.proxy.Shutdown(ctx); err != nil && ctx.Err() == nil {
		s.log.Warn("shutdown: http server", "err", err)
	}
}

// stopSources stops fetching, lets what was polled become durable, and
// commits the offsets of what is, before the destinations drain: from then
// on nothing new enters the spool, and the consumer groups hand the
// partitions to the other relays at once rather than after a session
// timeout.
func (s *server) stopSources(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, sourceStopTimeout)
	defer cancel()
	if err := s.sources.Stop(ctx); err != nil {
		s.log.Warn("shutdown: sources", "err", err)
	}
}

// closeSpool closes the spool within spoolCloseTimeout: closing must
// finish even when the caller's context is gone, but not wait forever on
// a disk that no longer takes writes. Once hurry is done (a second
// signal) it is given hurriedCloseTimeout more at most.
func (s *server) closeSpool(hurry context.Context) error {
	bounded, cancel := context.WithTimeoutCause(context.WithoutCancel(hurry), spoolCloseTimeout,
		fmt.Errorf("not closed within %v", spoolCloseTimeout))
	defer cancel()
	closeCtx, hurried := context.WithCancelCause(bounded)
	defer hurried(nil)
	defer context.AfterFunc(hurry, func() {
		time.AfterFunc(hurriedCloseTimeout, func() {
			hurried(fmt.Errorf("not closed within %v after a second signal", hurriedCloseTimeout))
		})
	})()
	return s.spool.Close(closeCtx)
}
