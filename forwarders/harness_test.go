package forwarders

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/spillwayhq/spillway/spool"
)

// testOpts are short enough that retries, backoffs and flushes take
// milliseconds.
const testOpts = "batch_events=5&flush=10ms&concurrency=2&timeout=300ms&backoff_min=5ms&backoff_max=50ms"

// opts merges query strings, later values winning.
func opts(qs ...string) string {
	v := url.Values{}
	for _, q := range qs {
		m, err := url.ParseQuery(q)
		if err != nil {
			panic(err)
		}
		for k, x := range m {
			v[k] = x
		}
	}
	return v.Encode()
}

// openSpool opens a real spool in dir; the test closes it at its end.
func openSpool(t *testing.T, dir string, consumers ...string) *spool.Spool {
	t.Helper()
	sp, err := spool.Open(spool.Config{Dir: dir, Consumers: consumers}, testLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := sp.Close(context.Background()); err != nil {
			t.Error(err)
		}
	})
	return sp
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// ev is a test event; its messageId names it.
type ev struct {
	id    string
	key   string // write key
	typ   string // default "track"
	bad   bool   // the reject scenarios refuse requests holding it
	extra string // more top-level JSON fields, with a leading comma
}

func (e ev) json() []byte {
	typ := e.typ
	if typ == "" {
		typ = "track"
	}
	return fmt.Appendf(nil, `{"type":%q,"event":"Test Event","userId":"u-1","messageId":%q,"properties":{"bad":%v}%s}`,
		typ, e.id, e.bad, e.extra)
}

// numbered returns n events m-000, m-001, ...; those whose index is in bad
// are marked.
func numbered(n int, bad ...int) []ev {
	out := make([]ev, n)
	for i := range out {
		out[i] = ev{id: fmt.Sprintf("m-%03d", i), key: "wk-1", bad: slices.Contains(bad, i)}
	}
	return out
}

func ids(evs []ev) []string {
	out := make([]string, len(evs))
	for i, e := range evs {
		out[i] = e.id
	}
	return out
}

func appendEvents(t *testing.T, sp *spool.Spool, evs ...ev) {
	t.Helper()
	in := make([]spool.Event, len(evs))
	for i, e := range evs {
		in[i] = spool.Event{WriteKey: e.key, Data: e.json()}
	}
	if err := sp.Append(t.Context(), in, nil); err != nil {
		t.Fatal(err)
	}
}

// startGroup starts forwarding to dests (NAME=URL specs) from sp; the test
// shuts it down at its end unless it did so itself.
func startGroup(t *testing.T, sp *spool.Spool, reg prometheus.Registerer, specs ...string) *Group {
	t.Helper()
	dests, err := ParseDestinations(specs, Defaults{})
	if err != nil {
		t.Fatal(err)
	}
	return startDests(t, sp, reg, dests, nil)
}

func startDests(t *testing.T, sp *spool.Spool, reg prometheus.Registerer, dests []Destination, fwds []Forwarder) *Group {
	t.Helper()
	g, err := newGroup(dests, fwds, sp, testLogger(t), reg)
	if err != nil {
		t.Fatal(err)
	}
	g.Start()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		_ = g.Shutdown(ctx)
	})
	return g
}

func shutdown(t *testing.T, g *Group, timeout time.Duration) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return g.Shutdown(ctx)
}

// eventually waits for cond, failing the test with msg after timeout.
func eventually(t *testing.T, timeout time.Duration, cond func() bool, msg string, args ...any) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: "+msg, append([]any{timeout}, args...)...)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func deadLetters(t *testing.T, sp *spool.Spool, dest string) []spool.DeadLetter {
	t.Helper()
	var out []spool.DeadLetter
	err := sp.DeadLetters(spool.Filter{Destination: dest}, func(d spool.DeadLetter) error {
		out = append(out, d)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func deadIDs(dls []spool.DeadLetter) []string {
	out := make([]string, len(dls))
	for i, d := range dls {
		out[i] = messageID(d.Event)
	}
	sort.Strings(out)
	return out
}

func messageID(event []byte) string {
	var e struct {
		MessageID string `json:"messageId"`
	}
	_ = json.Unmarshal(event, &e)
	return e.MessageID
}

// metric reads one series from reg; 0 when absent.
func metric(t *testing.T, reg prometheus.Gatherer, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				if !hasLabel(m, labels[i], labels[i+1]) {
					continue next
				}
			}
			switch {
			case m.Counter != nil:
				return m.Counter.GetValue()
			case m.Gauge != nil:
				return m.Gauge.GetValue()
			case m.Histogram != nil:
				return float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return 0
}

func hasLabel(m *dto.Metric, name, value string) bool {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue() == value
		}
	}
	return false
}

// answer is what the sink does with one request.
type answer struct {
	status int
	header http.Header
	body   string
	hang   bool // hold the request until the client gives up
	reset  bool // drop the connection with a TCP reset
}

// sinkReq is one request the sink received.
type sinkReq struct {
	at          time.Time
	done        time.Time // when it was answered
	ids         []string
	bad         bool
	user        string // Basic auth user: the write key
	sentAt      string
	gzip        bool
	contentType string
	uri         string
	bytes       int // of the body as sent
	status      int
	keys        []string // the events' "key" fields, where set
}

// sink is a destination's HTTP server that decodes every body shape we
// send (JSON array, NDJSON, Segment batch, gzipped or not) and records it.
type sink struct {
	t       *testing.T
	srv     *httptest.Server
	answer  func(n int, r *sinkReq) answer
	release chan struct{}

	mu        sync.Mutex
	reqs      []*sinkReq
	delivered map[string]int // messageId -> times answered with a 2xx
	order     []string       // messageIds in order of 2xx answers
	// failing is set from a retryable answer until the next success;
	// overlap is the most requests begun in that window at once.
	failing         bool
	failingInflight int
	overlap         int
}

func newSink(t *testing.T, answerFn func(n int, r *sinkReq) answer) *sink {
	s := &sink{t: t, answer: answerFn, delivered: map[string]int{}, release: make(chan struct{})}
	if s.answer == nil {
		s.answer = func(int, *sinkReq) answer { return answer{status: 200} }
	}
	s.srv = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(func() {
		close(s.release)
		s.srv.Close()
	})
	return s
}

func (s *sink) url() string { return s.srv.URL }

func (s *sink) serve(w http.ResponseWriter, r *http.Request) {
	raw, err := io.ReadAll(r.Body)
	if err != nil {
		return
	}
	req := &sinkReq{at: time.Now(), contentType: r.Header.Get("Content-Type"), uri: r.RequestURI, bytes: len(raw)}
	req.user, _, _ = r.BasicAuth()
	body := raw
	if r.Header.Get("Content-Encoding") == "gzip" {
		req.gzip = true
		zr, err := gzip.NewReader(bytes.NewReader(raw))
		if err != nil {
			s.t.Errorf("gunzip: %v", err)
			return
		}
		if body, err = io.ReadAll(zr); err != nil {
			s.t.Errorf("gunzip: %v", err)
			return
		}
	}
	events, sentAt, err := decodeEvents(body)
	if err != nil {
		s.t.Errorf("decode %q: %v", body, err)
		w.WriteHeader(500)
		return
	}
	req.sentAt = sentAt
	for _, e := range events {
		var f struct {
			MessageID  string `json:"messageId"`
			Key        string `json:"key"`
			Properties struct {
				Bad bool `json:"bad"`
			} `json:"properties"`
		}
		if err := json.Unmarshal(e, &f); err != nil {
			s.t.Errorf("event %s: %v", e, err)
		}
		req.ids = append(req.ids, f.MessageID)
		req.bad = req.bad || f.Properties.Bad
		if f.Key != "" {
			req.keys = append(req.keys, f.Key)
		}
	}

	s.mu.Lock()
	n := len(s.reqs)
	s.reqs = append(s.reqs, req)
	inWindow := s.failing
	if inWindow {
		s.failingInflight++
		s.overlap = max(s.overlap, s.failingInflight)
	}
	s.mu.Unlock()

	a := s.answer(n, req)
	switch {
	case a.hang:
		select {
		case <-r.Context().Done():
		case <-s.release:
		}
		a.status = http.StatusGatewayTimeout
	case a.reset:
		conn, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			if tc, ok := conn.(*net.TCPConn); ok {
				_ = tc.SetLinger(0)
			}
			_ = conn.Close()
		}
	}

	s.mu.Lock()
	if inWindow {
		s.failingInflight--
	}
	req.status = a.status
	req.done = time.Now()
	if a.status >= 200 && a.status < 300 {
		s.failing = false
		for _, id := range req.ids {
			s.delivered[id]++
			s.order = append(s.order, id)
		}
	} else if a.status == 429 || a.status >= 500 {
		s.failing = true
	}
	s.mu.Unlock()
	if a.reset {
		return
	}
	for k, v := range a.header {
		w.Header()[k] = v
	}
	w.WriteHeader(a.status)
	_, _ = io.WriteString(w, a.body)
}

func decodeEvents(body []byte) ([]json.RawMessage, string, error) {
	trimmed := bytes.TrimSpace(body)
	switch {
	case bytes.HasPrefix(trimmed, []byte(`[`)):
		var evs []json.RawMessage
		return evs, "", json.Unmarshal(trimmed, &evs)
	case bytes.HasPrefix(trimmed, []byte(`{"batch"`)):
		var b struct {
			Batch  []json.RawMessage `json:"batch"`
			SentAt string            `json:"sentAt"`
		}
		err := json.Unmarshal(trimmed, &b)
		return b.Batch, b.SentAt, err
	default:
		return decodeLines(trimmed)
	}
}

func decodeLines(body []byte) ([]json.RawMessage, string, error) {
	var evs []json.RawMessage
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if !json.Valid(sc.Bytes()) {
			return nil, "", fmt.Errorf("line %q is not JSON", sc.Bytes())
		}
		evs = append(evs, json.RawMessage(slices.Clone(sc.Bytes())))
	}
	return evs, "", sc.Err()
}

func (s *sink) requests() []sinkReq {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]sinkReq, len(s.reqs))
	for i, r := range s.reqs {
		out[i] = *r
	}
	return out
}

func (s *sink) deliveredCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.delivered)
}

// deliveredIDs returns the distinct messageIds answered with a 2xx, sorted.
func (s *sink) deliveredIDs() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, len(s.delivered))
	for id := range s.delivered {
		out = append(out, id)
	}
	sort.Strings(out)
	return out
}

// duplicates returns the messageIds delivered more than once.
func (s *sink) duplicates() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for id, n := range s.delivered {
		if n > 1 {
			out = append(out, fmt.Sprintf("%s x%d", id, n))
		}
	}
	sort.Strings(out)
	return out
}

// lockedBuffer is a goroutine-safe writer for stdout://.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) ids(t *testing.T) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return lineIDs(t, l.b.Bytes())
}

func fileIDs(t *testing.T, path string) []string {
	b, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return lineIDs(t, b)
}

func lineIDs(t *testing.T, b []byte) []string {
	evs, _, err := decodeLines(b)
	if err != nil {
		t.Fatalf("%v in %q", err, b)
	}
	out := make([]string, len(evs))
	for i, e := range evs {
		out[i] = messageID(e)
	}
	return out
}
