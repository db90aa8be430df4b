package main

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/spillwayhq/spillway/internal/testkit"
)

// binary is spillway built once for the tests that run it as a process.
// Those that spend their time waiting on it (kills, power cuts, drains,
// restarts, a browser) call t.Parallel(): each works on its own spool,
// sinks and port, so they overlap and the package takes about as long as
// the longest of them. Tests that set the environment the binary reads
// (t.Setenv) stay sequential, which also keeps them off the parallel ones.
var binary string

func buildBinary() (cleanup func(), err error) {
	dir, err := os.MkdirTemp("", "spillway-e2e-")
	if err != nil {
		return nil, err
	}
	binary = filepath.Join(dir, "spillway")
	out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput()
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("go build: %v\n%s", err, out)
	}
	return func() { os.RemoveAll(dir) }, nil
}

// process is a running spillway.
type process struct {
	t      testing.TB
	cmd    *exec.Cmd
	addr   string
	stderr *testkit.Buffer
	done   chan struct{}
}

func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startSpillway runs the binary with args plus a free --listen address and
// waits until it is ready. addr, when not empty, reuses an address.
func startSpillway(t testing.TB, addr string, stdout io.Writer, args ...string) *process {
	t.Helper()
	if addr == "" {
		addr = freeAddr(t)
	}
	p := &process{t: t, addr: addr, stderr: &testkit.Buffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(binary, append([]string{"run", "--listen", addr}, args...)...)
	p.cmd.Stdout = stdout
	p.cmd.Stderr = p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() { p.kill() })
	testkit.Eventually(t, func() bool {
		select {
		case <-p.done:
			t.Fatalf("spillway exited at start-up: %s", p.stderr)
		default:
		}
		resp, err := http.Get("http://" + addr + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, "spillway ready: %v", p.stderr)
	return p
}

func (p *process) url() string { return "http://" + p.addr }

func (p *process) kill() {
	select {
	case <-p.done:
	default:
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// stop sends SIGTERM and returns the exit status.
func (p *process) stop() int {
	p.t.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	return p.wait()
}

// wait waits for the process to exit and returns its status.
func (p *process) wait() int {
	p.t.Helper()
	select {
	case <-p.done:
		return p.cmd.ProcessState.ExitCode()
	case <-time.After(testkit.Patience):
		p.t.Fatalf("spillway still running after %v: %s", testkit.Patience, p.stderr)
		return -1
	}
}

// sink is a webhook destination on loopback, internal/testkit's Sink,
// whose answer the test changes as it goes: 200 until setStatus, and 400
// to the requests that refuse, when given, picks out.
type sink struct {
	*testkit.Sink
	status atomic.Int32
	refuse func(*testkit.Request) bool
}

func newSink(t testing.TB) *sink { return newRefusingSink(t, nil) }

func newRefusingSink(t testing.TB, refuse func(*testkit.Request) bool) *sink {
	s := &sink{refuse: refuse}
	s.Sink = testkit.NewSink(t, func(_ int, r *testkit.Request) testkit.Answer {
		if s.refuse != nil && s.refuse(r) {
			return testkit.Answer{Status: http.StatusBadRequest, Body: `{"error":"refused"}`}
		}
		return testkit.Answer{Status: int(s.status.Load())}
	})
	return s
}

func (s *sink) setStatus(code int) { s.status.Store(int32(code)) }

// segmentAPI is a Segment-compatible batch API on loopback, as spillway's
// segment+ destinations post to: it keeps each event by messageId, with
// the write key (Basic auth) and the batch's sentAt that came with it, and
// refuses, remembering why, any request but a gzipped POST /v1/batch with
// both.
type segmentAPI struct {
	srv *httptest.Server

	mu     sync.Mutex
	events map[string]map[string]any
	key    map[string]string
	sentAt map[string]string
	errs   []string
}

func newSegmentAPI(t *testing.T) *segmentAPI {
	s := &segmentAPI{events: map[string]map[string]any{}, key: map[string]string{}, sentAt: map[string]string{}}
	s.srv = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.srv.Close)
	return s
}

func (s *segmentAPI) serve(w http.ResponseWriter, r *http.Request) {
	key, _, _ := r.BasicAuth()
	var batch struct {
		Batch  []map[string]any `json:"batch"`
		SentAt string           `json:"sentAt"`
	}
	err := func() error {
		if r.Method != http.MethodPost || r.URL.Path != "/v1/batch" || r.Header.Get("Content-Encoding") != "gzip" || key == "" {
			return fmt.Errorf("%s %s with Content-Encoding %q and write key %q", r.Method, r.URL.Path, r.Header.Get("Content-Encoding"), key)
		}
		zr, err := gzip.NewReader(r.Body)
		if err != nil {
			return err
		}
		b, err := io.ReadAll(zr)
		if err != nil {
			return err
		}
		if err := json.Unmarshal(b, &batch); err != nil {
			return err
		}
		if batch.SentAt == "" {
			return fmt.Errorf("a batch without sentAt: %s", b)
		}
		return nil
	}()
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		s.errs = append(s.errs, err.Error())
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	for _, e := range batch.Batch {
		id, _ := e["messageId"].(string)
		s.events[id], s.key[id], s.sentAt[id] = e, key, batch.SentAt
	}
	w.Write([]byte(`{"success":true}`))
}

// event is the event with messageId id and the write key it came with; nil
// if it has not come.
func (s *segmentAPI) event(id string) (map[string]any, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.events[id], s.key[id]
}

// snapshot copies what has come so far, by messageId.
func (s *segmentAPI) snapshot() (events map[string]map[string]any, key, sentAt map[string]string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	events, key, sentAt = map[string]map[string]any{}, map[string]string{}, map[string]string{}
	for id, e := range s.events {
		events[id], key[id], sentAt[id] = e, s.key[id], s.sentAt[id]
	}
	return events, key, sentAt
}

// refused says why each refused request was refused.
func (s *segmentAPI) refused() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.errs)
}

// postAcked starts clients that post batches of n track events, their
// messageIds tagged tag, to url until ctx ends, and records under mu, in
// acked, every event answered 200. What is not acknowledged a client
// would send again: it is not the test's to check.
func postAcked(ctx context.Context, url, tag string, clients, n int, mu *sync.Mutex, acked map[string]bool) *sync.WaitGroup {
	var wg sync.WaitGroup
	for w := range clients {
		wg.Go(func() {
			client := &http.Client{Timeout: 5 * time.Second}
			defer client.CloseIdleConnections()
			for i := 0; ctx.Err() == nil; i++ {
				evs := trackEvents(fmt.Sprintf("%s-w%d-%d", tag, w, i), n)
				code, err := postBatch(ctx, client, url, "wk", evs)
				if deadAddress(err) {
					return
				}
				if err != nil || code != 200 {
					continue
				}
				mu.Lock()
				for _, e := range evs {
					acked[e["messageId"].(string)] = true
				}
				mu.Unlock()
			}
		})
	}
	return &wg
}

// deadAddress reports whether err says nothing listens at the address any
// more: the spillway there was killed. A client must stop posting then
// rather than until the test cancels it, as another test running in
// parallel may bind the freed port meanwhile, and its spillway or sink
// would acknowledge the posts, which this test would then count as its
// own, acknowledged and never delivered.
func deadAddress(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED)
}

// waitForAll waits until has reports every id in acked, read under mu.
func waitForAll(t testing.TB, where string, mu *sync.Mutex, acked map[string]bool, has func(string) bool) {
	t.Helper()
	mu.Lock()
	pending := slices.Collect(maps.Keys(acked))
	mu.Unlock()
	if len(pending) == 0 {
		t.Fatal("no request was acknowledged: the test proves nothing")
	}
	total := len(pending)
	// Each look checks only what had not arrived at the one before.
	testkit.Eventually(t, func() bool {
		pending = slices.DeleteFunc(pending, has)
		return len(pending) == 0
	}, "all %d acknowledged events %s: %v missing", total, where, func() any { return len(pending) })
}

// readNDJSON reads a file:// destination's events by messageId.
func readNDJSON(t testing.TB, path string) map[string]map[string]any {
	t.Helper()
	out := map[string]map[string]any{}
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return out
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var e map[string]any
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("file destination line %q: %v", sc.Text(), err)
		}
		out[e["messageId"].(string)] = e
	}
	return out
}

// postBatch sends one /v1/batch and returns the HTTP status.
func postBatch(ctx context.Context, client *http.Client, base, writeKey string, events []map[string]any) (int, error) {
	body, _ := json.Marshal(map[string]any{"batch": events, "sentAt": time.Now().UTC().Format(time.RFC3339Nano)})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/v1/batch", bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.SetBasicAuth(writeKey, "")
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

func trackEvents(prefix string, n int) []map[string]any {
	out := make([]map[string]any, n)
	for i := range out {
		out[i] = map[string]any{
			"type": "track", "event": "Order Completed", "userId": fmt.Sprintf("user-%d", i%17),
			"messageId":  fmt.Sprintf("%s-%d", prefix, i),
			"properties": map[string]any{"revenue": 12.5, "sku": strings.Repeat("x", 40)},
		}
	}
	return out
}
