package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/valyala/fasthttp"

	"github.com/spillwayhq/spillway/spool"
)

type fakeDLQ struct {
	mu      sync.Mutex
	letters []spool.DeadLetter
	listErr error // returned after the first letter
	changed []string
	filters []spool.Filter
}

func (f *fakeDLQ) DeadLetters(flt spool.Filter, fn func(spool.DeadLetter) error) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, d := range f.letters {
		if !flt.Matches(&d) {
			continue
		}
		if flt.Limit > 0 && n == flt.Limit {
			break
		}
		if err := fn(d); err != nil {
			return err
		}
		n++
		if f.listErr != nil {
			return f.listErr
		}
	}
	return nil
}

func (f *fakeDLQ) change(action string, flt spool.Filter) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.changed = append(f.changed, action)
	f.filters = append(f.filters, flt)
	n := 0
	for _, d := range f.letters {
		if flt.Matches(&d) {
			n++
		}
	}
	return n, nil
}

func (f *fakeDLQ) ReplayChecked(_ context.Context, flt spool.Filter, _ func(*spool.DeadLetter) bool) (int, error) {
	return f.change("replay", flt)
}

func (f *fakeDLQ) Purge(flt spool.Filter) (int, error) { return f.change("purge", flt) }

func testLetters() []spool.DeadLetter {
	at := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	return []spool.DeadLetter{
		{ID: 1, Reason: spool.ReasonInvalid, Error: "track requires event", At: at,
			WriteKey: "wk_live_0123456789", Event: json.RawMessage(`{"type":"track","userId":"u"}`)},
		{ID: 2, Destination: "segment", Reason: spool.ReasonRejected, Status: 400, Attempts: 3, Error: "bad", At: at,
			WriteKey: "short", Event: json.RawMessage(`{"type":"page","userId":"<u>"}`)},
		{ID: 3, Destination: "segment", Reason: spool.ReasonExpired, Attempts: 40, Error: "max_age", At: at,
			Event: json.RawMessage(`{"type":"page"}`)},
	}
}

func TestAdminStatus(t *testing.T) {
	h := newHarness(t, DefaultConfig(), withOptions(Options{
		Status: func() any { return map[string]any{"destinations": []string{"segment"}} },
	}))
	a := h.do(t, http.MethodGet, "/admin/status", nil)
	if a.status != http.StatusOK || string(a.body) != `{"destinations":["segment"]}`+"\n" {
		t.Errorf("status = %d %s", a.status, a.body)
	}
	if ct := a.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q", ct)
	}
}

func TestAdminDLQ(t *testing.T) {
	newDLQ := func() *fakeDLQ { return &fakeDLQ{letters: testLetters()} }

	t.Run("the list is NDJSON, one dead letter per line, write keys masked", func(t *testing.T) {
		h := newHarness(t, DefaultConfig(), withOptions(Options{DLQ: newDLQ()}))
		a := h.do(t, http.MethodGet, "/admin/dlq", nil)
		wantAnswer(t, a, http.StatusOK, "dlq_list.ndjson")
		if ct := a.header.Get("Content-Type"); ct != "application/x-ndjson" {
			t.Errorf("Content-Type = %q", ct)
		}
		if bytes.Contains(a.body, []byte("0123456789")) || bytes.Contains(a.body, []byte("short")) {
			t.Errorf("a write key leaked: %s", a.body)
		}
	})

	t.Run("the list is filtered by destination, reason and limit", func(t *testing.T) {
		h := newHarness(t, DefaultConfig(), withOptions(Options{DLQ: newDLQ()}))
		a := h.do(t, http.MethodGet, "/admin/dlq?destination=segment&limit=1", nil)
		lines := strings.Split(strings.TrimSpace(string(a.body)), "\n")
		if len(lines) != 1 || !strings.Contains(lines[0], `"id":2`) {
			t.Errorf("got %q, want dead letter 2 only", lines)
		}
		a = h.do(t, http.MethodGet, "/admin/dlq?reason=expired", nil)
		if !strings.Contains(string(a.body), `"id":3`) || strings.Count(string(a.body), "\n") != 1 {
			t.Errorf("reason=expired gave %s", a.body)
		}
	})

	t.Run("an error while listing ends the stream with an error line", func(t *testing.T) {
		dlq := newDLQ()
		dlq.listErr = spool.ErrClosed
		h := newHarness(t, DefaultConfig(), withOptions(Options{DLQ: dlq}))
		a := h.do(t, http.MethodGet, "/admin/dlq", nil)
		lines := strings.Split(strings.TrimSpace(string(a.body)), "\n")
		if len(lines) != 2 || lines[1] != `{"error":"list dead letters: spool: closed"}` {
			t.Errorf("got %q", lines)
		}
	})

	for _, action := range []string{"replay", "purge"} {
		t.Run(action+" answers the count and passes the filter", func(t *testing.T) {
			dlq := newDLQ()
			h := newHarness(t, DefaultConfig(), withOptions(Options{DLQ: dlq}))
			a := h.do(t, http.MethodPost, "/admin/dlq/"+action+"?destination=segment&reason=rejected&limit=5", nil)
			if a.status != http.StatusOK || string(a.body) != `{"count":1}` {
				t.Errorf("answer = %d %s", a.status, a.body)
			}
			want := spool.Filter{Destination: "segment", Reason: "rejected", Limit: 5}
			if len(dlq.changed) != 1 || dlq.changed[0] != action || dlq.filters[0] != want {
				t.Errorf("store saw %v %+v", dlq.changed, dlq.filters)
			}
			if a := h.do(t, http.MethodGet, "/admin/dlq/"+action, nil); a.status != http.StatusMethodNotAllowed {
				t.Errorf("GET %s = %d, want 405", action, a.status)
			}
		})
	}

	t.Run("a bad limit is refused", func(t *testing.T) {
		h := newHarness(t, DefaultConfig(), withOptions(Options{DLQ: newDLQ()}))
		wantAnswer(t, h.do(t, http.MethodPost, "/admin/dlq/purge?limit=-1", nil), http.StatusBadRequest, "invalid_query.json")
	})
}

func TestAdminAccess(t *testing.T) {
	remote := &net.TCPAddr{IP: net.IPv4(10, 1, 2, 3), Port: 40000}
	loopback := &net.TCPAddr{IP: net.IPv6loopback, Port: 40000}
	tests := []struct {
		scenario string
		from     net.Addr
		token    string
		header   string
		status   int
	}{
		{"a loopback client is allowed without a token", loopback, "", "", http.StatusOK},
		{"a remote client is refused when no token is set", remote, "", "Authorization: Bearer ", http.StatusForbidden},
		{"a remote client without the token is refused", remote, "s3cret", "", http.StatusForbidden},
		{"a remote client with a wrong token is refused", remote, "s3cret", "Authorization: Bearer s3cre", http.StatusForbidden},
		{"a remote client with the token is allowed", remote, "s3cret", "Authorization: Bearer s3cret", http.StatusOK},
	}
	for _, tt := range tests {
		t.Run(tt.scenario, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.AdminToken = tt.token
			dlq := &fakeDLQ{letters: testLetters()}
			h := newHarness(t, cfg, withOptions(Options{DLQ: dlq}), withRemote(tt.from))
			var headers []string
			if tt.header != "" {
				headers = append(headers, tt.header)
			}
			for _, req := range []struct{ method, path string }{
				{http.MethodPost, "/admin/dlq/replay"},
				{http.MethodPost, "/admin/dlq/purge"},
				{http.MethodGet, "/admin/dlq"},
			} {
				a := h.do(t, req.method, req.path, nil, headers...)
				if a.status != tt.status {
					t.Errorf("%s %s = %d, want %d", req.method, req.path, a.status, tt.status)
				}
				if tt.status == http.StatusForbidden {
					wantAnswer(t, a, http.StatusForbidden, "forbidden.json")
				}
			}
			if tt.status == http.StatusForbidden && len(dlq.changed) != 0 {
				t.Errorf("a refused request changed the store: %v", dlq.changed)
			}
			// Event endpoints stay open to every client.
			if a := h.post(t, "/v1/track", `{"userId":"u","event":"e"}`); a.status != http.StatusOK {
				t.Errorf("POST /v1/track = %d, want 200", a.status)
			}
		})
	}
}

func TestStatusFor(t *testing.T) {
	tests := []struct {
		scenario string
		err      error
		status   int
		code     string
	}{
		{"no error is a 200", nil, 200, ""},
		{"invalid JSON is a 400", badRequest(errInvalidJSON, "x"), 400, "invalid_json"},
		{"bad gzip is a 400", badRequest(errInvalidGzip, "x"), 400, "invalid_gzip"},
		{"an unknown encoding is a 400", badRequest(errUnsupportedEncoding, "x"), 400, "unsupported_encoding"},
		{"an empty batch is a 400", badRequest(errEmptyBatch, "x"), 400, "empty_batch"},
		{"a limit is a 400, as Segment answers an oversized body", badRequest(errTooLarge, "x"), 400, "too_large"},
		{"an invalid event under --strict is a 400", badRequest(errInvalidEvent, "x"), 400, "invalid_event"},
		{"a bad admin query is a 400", badRequest(errInvalidQuery, "x"), 400, "invalid_query"},
		{"a missing or unknown write key is a 401", errUnauthorized, 401, "unauthorized"},
		{"a remote admin client is a 403", errForbidden, 403, "forbidden"},
		{"an unknown path is a 404", errNotFound, 404, "not_found"},
		{"a wrong method is a 405", errMethodNotAllowed, 405, "method_not_allowed"},
		{"replaying for a destination not configured is a 400", errors.Join(errors.New("destination x"), spool.ErrUnknownConsumer), 400, "unknown_destination"},
		{"a full spool is a 503", spool.ErrFull, 503, "unavailable"},
		{"a wrapped full spool is a 503", errors.Join(errors.New("commit"), spool.ErrFull), 503, "unavailable"},
		{"a closed spool is a 503", spool.ErrClosed, 503, "unavailable"},
		{"shutting down is a 503", errShuttingDown, 503, "unavailable"},
		{"a cancelled append is a 503", context.Canceled, 503, "unavailable"},
		{"anything else is a 500, never a 4xx that SDKs would drop", errors.New("disk on fire"), 500, "internal"},
	}
	for _, tt := range tests {
		t.Run(tt.scenario, func(t *testing.T) {
			status, code := statusFor(tt.err)
			if status != tt.status || code != tt.code {
				t.Errorf("statusFor(%v) = %d %q, want %d %q", tt.err, status, code, tt.status, tt.code)
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		scenario string
		mutate   func(*Config)
		want     string // "" for valid
	}{
		{"the defaults are valid", func(*Config) {}, ""},
		{"write keys and a token are valid", func(c *Config) { c.WriteKeys = []string{"a", "b"}; c.AdminToken = "t" }, ""},
		{"an empty write key is refused", func(c *Config) { c.WriteKeys = []string{"a", ""} }, "--write-key must not be empty"},
		{"a zero event limit is refused", func(c *Config) { c.MaxEventBytes = 0 }, "--max-event-bytes must be > 0"},
		{"a negative request limit is refused", func(c *Config) { c.MaxRequestBytes = -1 }, "--max-request-bytes must be > 0"},
		{"a zero batch limit is refused", func(c *Config) { c.MaxBatchEvents = 0 }, "--max-batch-events must be > 0"},
		{"an event limit over the request limit is refused", func(c *Config) { c.MaxEventBytes = 2 << 20 },
			"--max-event-bytes (2097152) must be <= --max-request-bytes (512000)"},
		{"every problem is reported", func(c *Config) { *c = Config{} },
			"--max-event-bytes must be > 0\n--max-request-bytes must be > 0\n--max-batch-events must be > 0"},
	}
	for _, tt := range tests {
		t.Run(tt.scenario, func(t *testing.T) {
			cfg := DefaultConfig()
			tt.mutate(&cfg)
			err := cfg.Validate()
			got := ""
			if err != nil {
				got = err.Error()
			}
			if got != tt.want {
				t.Errorf("Validate() = %q, want %q", got, tt.want)
			}
			if _, nerr := New(cfg, &fakeSpool{}, Options{}, nil, nil); (nerr != nil) != (tt.want != "") {
				t.Errorf("New error = %v, want it to match Validate", nerr)
			}
		})
	}
}

func TestNewRegistersOnTheGivenRegistryOnly(t *testing.T) {
	h := newHarness(t, DefaultConfig())
	mfs, err := h.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, mf := range mfs {
		names[mf.GetName()] = true
	}
	for _, n := range []string{"spillway_events_received_total", "spillway_events_rejected_total",
		"spillway_request_duration_seconds", "spillway_request_errors_total"} {
		if !names[n] {
			t.Errorf("%s not registered", n)
		}
	}
	if _, err := New(DefaultConfig(), &fakeSpool{}, Options{}, nil, h.reg); err == nil {
		t.Error("a second Server on the same registry should fail to register")
	}
}

func TestServeAdmin(t *testing.T) {
	h := newHarness(t, DefaultConfig(), withOptions(Options{
		Status: func() any { return "ok" },
		DLQ:    &fakeDLQ{},
	}))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- h.s.ServeAdmin(ln) }()
	t.Cleanup(func() {
		if err := h.s.Shutdown(context.Background()); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-served; err != nil {
			t.Errorf("ServeAdmin: %v", err)
		}
	})
	admin := *h
	admin.base = "http://" + ln.Addr().String()

	for _, c := range []struct {
		h      *harness
		method string
		path   string
		status int
	}{
		{&admin, http.MethodGet, "/admin/status", http.StatusOK},
		{&admin, http.MethodGet, "/metrics", http.StatusOK},
		{&admin, http.MethodGet, "/healthz", http.StatusOK},
		{&admin, http.MethodGet, "/readyz", http.StatusOK},
		{&admin, http.MethodGet, "/admin/dlq", http.StatusOK},
		{&admin, http.MethodPost, "/v1/track", http.StatusNotFound},
		{h, http.MethodGet, "/metrics", http.StatusNotFound},
		{h, http.MethodGet, "/admin/status", http.StatusNotFound},
		{h, http.MethodPost, "/admin/dlq/purge", http.StatusNotFound},
		{h, http.MethodGet, "/healthz", http.StatusOK},
		{h, http.MethodGet, "/readyz", http.StatusOK},
	} {
		a := c.h.do(t, c.method, c.path, []byte(`{"userId":"u","event":"e"}`))
		if a.status != c.status {
			t.Errorf("%s %s on %s = %d, want %d", c.method, c.path, c.h.base, a.status, c.status)
		}
	}
	if a := h.post(t, "/v1/track", `{"userId":"u","event":"e"}`); a.status != http.StatusOK {
		t.Errorf("events on the main listener = %d, want 200", a.status)
	}
}

// TestEveryAnswerIsCounted: each row of answers is what its error is
// answered with, and an event request answered with it is counted under
// its code; a code without a counter would panic on the first such answer.
func TestEveryAnswerIsCounted(t *testing.T) {
	s, err := New(DefaultConfig(), &fakeSpool{}, Options{}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	rows := append(slices.Clone(answers), answerRow{err: errors.New("disk on fire"), status: 500, code: "internal"})
	for _, row := range rows {
		err := row.err
		if row.status == http.StatusBadRequest && row.message == "" {
			err = badRequest(row.err, "x")
		}
		if status, code := statusFor(err); status != row.status || code != row.code {
			t.Errorf("statusFor(%v) = %d %q, want its row's %d %q", err, status, code, row.status, row.code)
		}
		counter, ok := s.m.errors[row.code]
		if !ok {
			t.Errorf("no spillway_request_errors_total{code=%q}", row.code)
			continue
		}
		before := testutil.ToFloat64(counter)
		var ctx fasthttp.RequestCtx
		s.failEvents(&ctx, epTrack, err)
		if got := ctx.Response.StatusCode(); got != row.status {
			t.Errorf("%v answered %d, want %d", err, got, row.status)
		}
		if got := testutil.ToFloat64(counter) - before; got != 1 {
			t.Errorf("%v counted %v times under %q, want once", err, got, row.code)
		}
	}
}
