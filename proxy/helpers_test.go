package proxy

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"flag"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"
	"github.com/valyala/fasthttp/fasthttputil"

	"github.com/spillwayhq/spillway/spool"
)

var update = flag.Bool("update", false, "rewrite the answer fixtures in testdata/answers")

// fixedNow is the server's clock in tests, so enrichment is exact.
var fixedNow = time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)

// appendCall is one Append as the fake spool saw it, deep-copied: the
// proxy may reuse its buffers once Append returns.
type appendCall struct {
	events []spool.Event
	dead   []spool.DeadLetter
}

type fakeSpool struct {
	mu       sync.Mutex
	calls    []appendCall
	appendFn func() error // nil: succeed
	readyErr error
}

// SubmitFrom copies what it is given, as the spool does, and runs appendFn
// as the commit: a blocking appendFn is a slow commit, and its error is
// the commit's outcome. It skips nothing: the spool's tests cover that.
func (f *fakeSpool) SubmitFrom(_ string, events []spool.Event, dead []spool.DeadLetter) (<-chan error, int, error) {
	var c appendCall
	for _, e := range events {
		e.Data = bytes.Clone(e.Data)
		e.MessageID = bytes.Clone(e.MessageID)
		c.events = append(c.events, e)
	}
	for _, d := range dead {
		d.Event = bytes.Clone(d.Event)
		c.dead = append(c.dead, d)
	}
	f.mu.Lock()
	fn := f.appendFn
	f.mu.Unlock()
	done := make(chan error, 1)
	if fn != nil {
		if err := fn(); err != nil {
			done <- err
			return done, 0, nil
		}
	}
	f.mu.Lock()
	f.calls = append(f.calls, c)
	f.mu.Unlock()
	done <- nil
	return done, 0, nil
}

func (f *fakeSpool) setAppend(fn func() error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.appendFn = fn
}

// blockAppends makes commits wait until release is closed; entered is
// closed once the first has begun.
func (f *fakeSpool) blockAppends() (entered, release chan struct{}) {
	entered, release = make(chan struct{}), make(chan struct{})
	var once sync.Once
	f.setAppend(func() error {
		once.Do(func() { close(entered) })
		<-release
		return nil
	})
	return entered, release
}

func (f *fakeSpool) setReady(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.readyErr = err
}

func (f *fakeSpool) Ready() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.readyErr
}

func (f *fakeSpool) Calls() []appendCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]appendCall(nil), f.calls...)
}

// onlyCall returns the one Append call a request should have made.
func (f *fakeSpool) onlyCall(t *testing.T) appendCall {
	t.Helper()
	calls := f.Calls()
	if len(calls) != 1 {
		t.Fatalf("Append called %d times, want 1", len(calls))
	}
	return calls[0]
}

func (f *fakeSpool) wantNoCalls(t *testing.T) {
	t.Helper()
	if n := len(f.Calls()); n != 0 {
		t.Fatalf("Append called %d times, want none: nothing of the request may be stored", n)
	}
}

type harness struct {
	s      *Server
	sp     *fakeSpool
	reg    *prometheus.Registry
	client *http.Client
	base   string
}

type harnessOpt func(*harnessConfig)

type harnessConfig struct {
	opts Options
	// remote, when set, serves on an in-memory listener whose clients
	// appear to come from this address; otherwise a real loopback socket.
	remote net.Addr
}

func withOptions(o Options) harnessOpt { return func(c *harnessConfig) { c.opts = o } }
func withRemote(a net.Addr) harnessOpt { return func(c *harnessConfig) { c.remote = a } }

// newHarness serves a Server over real HTTP and stops it when the test ends.
func newHarness(t *testing.T, cfg Config, hopts ...harnessOpt) *harness {
	t.Helper()
	var hc harnessConfig
	for _, o := range hopts {
		o(&hc)
	}
	reg := prometheus.NewRegistry()
	if hc.opts.Metrics == nil {
		hc.opts.Metrics = fasthttpadaptor.NewFastHTTPHandler(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	}
	sp := &fakeSpool{}
	s, err := New(cfg, sp, hc.opts, slog.New(slog.NewTextHandler(t.Output(), nil)), reg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	s.now = func() time.Time { return fixedNow }
	// fasthttp's worker-pool cleaner sleeps this long between checks for
	// Shutdown; keep it short so goleak sees it gone.
	s.srv.MaxIdleWorkerDuration = 50 * time.Millisecond
	s.adminSrv.MaxIdleWorkerDuration = 50 * time.Millisecond

	var ln net.Listener
	tr := &http.Transport{DisableCompression: true}
	if hc.remote != nil {
		mem := fasthttputil.NewInmemoryListener()
		tr.DialContext = func(context.Context, string, string) (net.Conn, error) {
			return mem.DialWithLocalAddr(hc.remote)
		}
		ln = mem
	} else {
		ln, err = net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("listen: %v", err)
		}
	}
	serveUntilCleanup(t, s, ln)
	t.Cleanup(tr.CloseIdleConnections) // before the Shutdown: cleanups run last first
	return &harness{
		s:      s,
		sp:     sp,
		reg:    reg,
		client: &http.Client{Transport: tr, Timeout: patience(t)},
		base:   "http://" + ln.Addr().String(),
	}
}

// serveUntilCleanup serves s on ln until the test ends, then shuts it down
// and checks that Serve returned cleanly.
func serveUntilCleanup(t *testing.T, s *Server, ln net.Listener) {
	t.Helper()
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), patience(t))
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
}

// patience is how long a test waits for what must happen (an answer, a
// closed connection, a shutdown): until shortly before go test's -timeout.
// A bound of a few seconds would be a guess at this machine's speed, and
// a loaded machine would fail it; this one only turns a hang into a
// failure that names the test, instead of the dump of every goroutine that
// -timeout ends with.
func patience(t *testing.T) time.Duration {
	deadline, ok := t.Deadline()
	if !ok {
		return time.Hour
	}
	return time.Until(deadline) * 9 / 10
}

type answer struct {
	status int
	header http.Header
	body   []byte
}

// do sends one request; headers are "Name: value" strings.
func (h *harness) do(t *testing.T, method, path string, body []byte, headers ...string) answer {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, h.base+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for _, hv := range headers {
		k, v, _ := strings.Cut(hv, ": ")
		req.Header.Set(k, v)
	}
	resp, err := h.client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read answer: %v", err)
	}
	return answer{status: resp.StatusCode, header: resp.Header, body: b}
}

func (h *harness) post(t *testing.T, path, body string, headers ...string) answer {
	t.Helper()
	return h.do(t, http.MethodPost, path, []byte(body), headers...)
}

// wantAnswer checks the status and that the body is the fixture's bytes.
func wantAnswer(t *testing.T, a answer, status int, fixture string) {
	t.Helper()
	if a.status != status {
		t.Errorf("status = %d, want %d (body %s)", a.status, status, a.body)
	}
	path := filepath.Join("testdata", "answers", fixture)
	if *update {
		if err := os.WriteFile(path, a.body, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read fixture: %v", err)
	}
	if !bytes.Equal(a.body, want) {
		t.Errorf("body =\n%s\nwant (%s)\n%s", a.body, path, want)
	}
}

// decode parses a stored event, failing the test on invalid JSON.
func decode(t *testing.T, data []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatalf("stored event is not a JSON object: %v\n%s", err, data)
	}
	return m
}

// basicToken is what the Segment SDKs put after "Basic ": the write key as
// user name and no password.
func basicToken(key string) string {
	return base64.StdEncoding.EncodeToString([]byte(key + ":"))
}

func basicAuth(key string) string { return "Authorization: Basic " + basicToken(key) }
