package proxy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/spillwayhq/spillway/internal/segment"
	"github.com/spillwayhq/spillway/spool"
)

func TestSingleEventEndpoints(t *testing.T) {
	tests := []struct {
		scenario string
		path     string
		body     string
		wantType string
	}{
		{"a track is stored with its type taken from the path", "/v1/track", `{"userId":"u1","event":"Signed Up"}`, "track"},
		{"an identify is stored", "/v1/identify", `{"userId":"u1","traits":{"plan":"pro"}}`, "identify"},
		{"a page is stored", "/v1/page", `{"anonymousId":"a1","name":"Home"}`, "page"},
		{"a screen is stored", "/v1/screen", `{"anonymousId":"a1","name":"Settings"}`, "screen"},
		{"a group is stored", "/v1/group", `{"userId":"u1","groupId":"g1"}`, "group"},
		{"an alias is stored", "/v1/alias", `{"userId":"u1","previousId":"a1"}`, "alias"},
		{"analytics.js's /v1/t is a track", "/v1/t", `{"type":"track","userId":"u1","event":"Clicked"}`, "track"},
		{"analytics.js's /v1/i is an identify", "/v1/i", `{"userId":"u1"}`, "identify"},
		{"analytics.js's /v1/p is a page", "/v1/p", `{"anonymousId":"a1"}`, "page"},
		{"analytics.js's /v1/s is a screen", "/v1/s", `{"anonymousId":"a1"}`, "screen"},
		{"analytics.js's /v1/g is a group", "/v1/g", `{"userId":"u1","groupId":7}`, "group"},
		{"analytics.js's /v1/a is an alias", "/v1/a", `{"userId":"u1","previousId":"a1"}`, "alias"},
		{"a type in the body is kept", "/v1/track", `{"type":"track","userId":"u1","event":"x"}`, "track"},
	}
	for _, tt := range tests {
		t.Run(tt.scenario, func(t *testing.T) {
			h := newHarness(t, DefaultConfig())
			a := h.post(t, tt.path, tt.body)
			wantAnswer(t, a, http.StatusOK, "success.json")
			c := h.sp.onlyCall(t)
			if len(c.events) != 1 || len(c.dead) != 0 {
				t.Fatalf("stored %d events and %d dead letters, want 1 and 0", len(c.events), len(c.dead))
			}
			if got := decode(t, c.events[0].Data)["type"]; got != tt.wantType {
				t.Errorf("type = %v, want %s", got, tt.wantType)
			}
		})
	}
}

func TestBatchEndpoints(t *testing.T) {
	body := `{"batch":[
		{"type":"track","userId":"u1","event":"A"},
		{"type":"identify","anonymousId":"a1"},
		{"type":"page","userId":"u1"}
	],"sentAt":"2024-05-01T11:59:59Z"}`
	for _, path := range []string{"/v1/batch", "/v1/b", "/v1/import"} {
		t.Run(path+" stores every event of the batch in one Append", func(t *testing.T) {
			h := newHarness(t, DefaultConfig())
			wantAnswer(t, h.post(t, path, body), http.StatusOK, "success.json")
			c := h.sp.onlyCall(t)
			if len(c.events) != 3 {
				t.Fatalf("stored %d events, want 3", len(c.events))
			}
			for i, want := range []string{"track", "identify", "page"} {
				if got := decode(t, c.events[i].Data)["type"]; got != want {
					t.Errorf("event %d type = %v, want %s", i, got, want)
				}
			}
		})
	}
}

func TestBadRequests(t *testing.T) {
	tests := []struct {
		scenario string
		path     string
		body     string
		headers  []string
		fixture  string
	}{
		{"a body that is not JSON is refused", "/v1/batch", `{"batch":[`, nil, "invalid_json.json"},
		{"a body that is a JSON array is refused", "/v1/track", `[1,2]`, nil, "not_object.json"},
		{"a batch that is not an array is refused", "/v1/batch", `{"batch":{}}`, nil, "batch_not_array.json"},
		{"an empty batch is refused", "/v1/batch", `{"batch":[]}`, nil, "empty_batch.json"},
		{"a body without a batch is refused", "/v1/import", `{"userId":"u1"}`, nil, "missing_batch.json"},
		{"a number JSON does not allow is refused", "/v1/track", `{"userId":"u1","event":"x","properties":{"n":NaN}}`, nil, "invalid_number.json"},
		{"an encoding other than gzip is refused", "/v1/track", `{}`, []string{"Content-Encoding: br"}, "unsupported_encoding.json"},
	}
	for _, tt := range tests {
		t.Run(tt.scenario, func(t *testing.T) {
			h := newHarness(t, DefaultConfig())
			wantAnswer(t, h.post(t, tt.path, tt.body, tt.headers...), http.StatusBadRequest, tt.fixture)
			h.sp.wantNoCalls(t)
		})
	}
}

func TestTextPlainIsReadAsJSON(t *testing.T) {
	h := newHarness(t, DefaultConfig())
	a := h.post(t, "/v1/t", `{"userId":"u1","event":"x"}`, "Content-Type: text/plain;charset=UTF-8")
	wantAnswer(t, a, http.StatusOK, "success.json")
	h.sp.onlyCall(t)
}

func TestAuth(t *testing.T) {
	const good, other = "wk_live_0123456789abcdef", "wk_live_other_key_xyz"
	keys := DefaultConfig()
	keys.WriteKeys = []string{other, good}
	tests := []struct {
		scenario string
		cfg      Config
		path     string // default /v1/batch
		body     string
		headers  []string
		status   int
		fixture  string
		wantKeys []string
	}{
		{
			scenario: "without --write-key any key is accepted and carried",
			cfg:      DefaultConfig(),
			body:     `{"batch":[{"type":"track","userId":"u","event":"e"}]}`,
			headers:  []string{basicAuth("anything")},
			status:   http.StatusOK, fixture: "success.json",
			wantKeys: []string{"anything"},
		},
		{
			scenario: "without --write-key a request with no key is accepted",
			cfg:      DefaultConfig(),
			body:     `{"batch":[{"type":"track","userId":"u","event":"e"}]}`,
			status:   http.StatusOK, fixture: "success.json",
			wantKeys: []string{""},
		},
		{
			scenario: "a known key in Basic auth is accepted",
			cfg:      keys,
			body:     `{"batch":[{"type":"track","userId":"u","event":"e"}]}`,
			headers:  []string{basicAuth(good)},
			status:   http.StatusOK, fixture: "success.json",
			wantKeys: []string{good},
		},
		{
			scenario: "a known key in the batch body is accepted",
			cfg:      keys,
			body:     `{"writeKey":"` + good + `","batch":[{"type":"track","userId":"u","event":"e"}]}`,
			status:   http.StatusOK, fixture: "success.json",
			wantKeys: []string{good},
		},
		{
			scenario: "a key in an event wins over the batch's and the header's",
			cfg:      keys,
			body: `{"writeKey":"` + good + `","batch":[{"type":"track","userId":"u","event":"e","writeKey":"` + other + `"},` +
				`{"type":"track","userId":"u","event":"e"}]}`,
			headers: []string{basicAuth("unused")},
			status:  http.StatusOK, fixture: "success.json",
			wantKeys: []string{other, good},
		},
		{
			scenario: "analytics.js's key in a single event is accepted",
			cfg:      keys,
			path:     "/v1/t",
			body:     `{"writeKey":"` + good + `","userId":"u","event":"e"}`,
			status:   http.StatusOK, fixture: "success.json",
			wantKeys: []string{good},
		},
		{
			scenario: "an unknown key is refused",
			cfg:      keys,
			body:     `{"batch":[{"type":"track","userId":"u","event":"e"}]}`,
			headers:  []string{basicAuth("wk_live_0123456789abcdeX")},
			status:   http.StatusUnauthorized, fixture: "unauthorized.json",
		},
		{
			scenario: "a missing key is refused",
			cfg:      keys,
			body:     `{"batch":[{"type":"track","userId":"u","event":"e"}]}`,
			status:   http.StatusUnauthorized, fixture: "unauthorized.json",
		},
		{
			scenario: "one event with an unknown key refuses the whole request",
			cfg:      keys,
			body:     `{"batch":[{"type":"track","userId":"u","event":"e"},{"type":"track","userId":"u","event":"e","writeKey":"nope"}]}`,
			headers:  []string{basicAuth(good)},
			status:   http.StatusUnauthorized, fixture: "unauthorized.json",
		},
	}
	for _, tt := range tests {
		t.Run(tt.scenario, func(t *testing.T) {
			h := newHarness(t, tt.cfg)
			path := tt.path
			if path == "" {
				path = "/v1/batch"
			}
			wantAnswer(t, h.post(t, path, tt.body, tt.headers...), tt.status, tt.fixture)
			if tt.status != http.StatusOK {
				h.sp.wantNoCalls(t)
				return
			}
			c := h.sp.onlyCall(t)
			if len(c.events) != len(tt.wantKeys) {
				t.Fatalf("stored %d events, want %d", len(c.events), len(tt.wantKeys))
			}
			for i, e := range c.events {
				if e.WriteKey != tt.wantKeys[i] {
					t.Errorf("event %d WriteKey = %q, want %q", i, e.WriteKey, tt.wantKeys[i])
				}
				if bytes.Contains(e.Data, []byte("writeKey")) {
					t.Errorf("event %d still holds its write key: %s", i, e.Data)
				}
			}
		})
	}
}

func TestCORS(t *testing.T) {
	t.Run("a preflight is answered with what browsers need", func(t *testing.T) {
		h := newHarness(t, DefaultConfig())
		a := h.do(t, http.MethodOptions, "/v1/t", nil,
			"Origin: https://shop.example", "Access-Control-Request-Method: POST",
			"Access-Control-Request-Headers: content-type,authorization")
		if a.status != http.StatusNoContent {
			t.Errorf("status = %d, want 204", a.status)
		}
		want := map[string]string{
			"Access-Control-Allow-Origin":      "https://shop.example",
			"Access-Control-Allow-Credentials": "true",
			"Access-Control-Allow-Methods":     "POST, OPTIONS",
			"Access-Control-Allow-Headers":     "content-type,authorization",
			"Access-Control-Max-Age":           "86400",
		}
		for k, v := range want {
			if got := a.header.Get(k); got != v {
				t.Errorf("%s = %q, want %q", k, got, v)
			}
		}
		h.sp.wantNoCalls(t)
	})
	t.Run("answers carry CORS headers, errors included", func(t *testing.T) {
		h := newHarness(t, DefaultConfig())
		a := h.post(t, "/v1/t", `{"userId":"u","event":"e"}`, "Origin: https://shop.example")
		if got := a.header.Get("Access-Control-Allow-Origin"); got != "https://shop.example" {
			t.Errorf("Allow-Origin on 200 = %q", got)
		}
		a = h.post(t, "/v1/t", `nope`)
		if got := a.header.Get("Access-Control-Allow-Origin"); got != "*" {
			t.Errorf("Allow-Origin on 400 without Origin = %q, want *", got)
		}
	})
}

// TestServeAfterShutdownReturns: fasthttp's Shutdown passes over a
// listener its Serve has not taken yet, and Serve, called just after,
// then accepted for ever. Serve after Shutdown must close its listener
// without accepting once.
func TestServeAfterShutdownReturns(t *testing.T) {
	s, err := New(DefaultConfig(), &fakeSpool{}, Options{}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	for name, serve := range map[string]func(net.Listener) error{"Serve": s.Serve, "ServeAdmin": s.ServeAdmin} {
		var ln countingListener
		if err := serve(&ln); err != nil {
			t.Errorf("%s after Shutdown = %v", name, err)
		}
		if ln.accepts.Load() != 0 || ln.closes.Load() == 0 {
			t.Errorf("%s after Shutdown: %d accepts, %d closes; want none and the listener closed", name, ln.accepts.Load(), ln.closes.Load())
		}
	}
}

// countingListener counts what is asked of it. It has no connections: its
// Accept fails at once, as a closed listener's does, so that a Serve that
// accepts returns instead of waiting.
type countingListener struct {
	accepts, closes atomic.Int32
}

func (l *countingListener) Accept() (net.Conn, error) {
	l.accepts.Add(1)
	return nil, net.ErrClosed
}

func (l *countingListener) Close() error {
	l.closes.Add(1)
	return nil
}

func (l *countingListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)} }

func TestClientMetricsAreAnsweredAndDropped(t *testing.T) {
	h := newHarness(t, DefaultConfig())
	a := h.do(t, http.MethodOptions, "/v1/m", nil,
		"Origin: https://shop.example", "Access-Control-Request-Method: POST")
	if a.status != http.StatusNoContent || a.header.Get("Access-Control-Allow-Origin") != "https://shop.example" {
		t.Errorf("preflight: status %d, Allow-Origin %q; want 204 and the origin", a.status, a.header.Get("Access-Control-Allow-Origin"))
	}
	body := `{"series":[{"type":"Counter","metric":"analytics_js.invoke","value":1,"tags":{"type":"track"}}]}`
	a = h.post(t, "/v1/m", body, "Origin: https://shop.example", "Content-Type: text/plain")
	wantAnswer(t, a, http.StatusOK, "success.json")
	if got := a.header.Get("Access-Control-Allow-Origin"); got != "https://shop.example" {
		t.Errorf("Allow-Origin = %q, want the origin", got)
	}
	h.sp.wantNoCalls(t)
	if a := h.do(t, http.MethodGet, "/v1/m", nil); a.status != http.StatusMethodNotAllowed {
		t.Errorf("GET /v1/m: status %d, want 405", a.status)
	}
}

func TestLimits(t *testing.T) {
	small := DefaultConfig()
	small.MaxEventBytes = 200
	small.MaxRequestBytes = 1000
	small.MaxBatchEvents = 3
	ev := `{"type":"track","userId":"u","event":"e"}`
	tests := []struct {
		scenario string
		path     string
		body     string
		fixture  string
	}{
		{"an event over --max-event-bytes refuses the request", "/v1/track",
			`{"userId":"u","event":"e","properties":{"p":"` + strings.Repeat("x", 200) + `"}}`, "too_large_event.json"},
		{"a body over --max-request-bytes is refused", "/v1/batch",
			`{"batch":[` + ev + `],"pad":"` + strings.Repeat("x", 1000) + `"}`, "too_large_request.json"},
		{"a batch over --max-batch-events is refused", "/v1/batch",
			`{"batch":[` + strings.Repeat(ev+",", 3) + ev + `]}`, "too_large_batch.json"},
	}
	for _, tt := range tests {
		t.Run(tt.scenario, func(t *testing.T) {
			h := newHarness(t, small)
			wantAnswer(t, h.post(t, tt.path, tt.body), http.StatusBadRequest, tt.fixture)
			h.sp.wantNoCalls(t)
			if got := testutil.ToFloat64(h.s.m.errors["too_large"]); got != 1 {
				t.Errorf("too_large errors counted = %v, want 1", got)
			}
		})
	}
	t.Run("events and batches at the limits are accepted", func(t *testing.T) {
		h := newHarness(t, small)
		body := `{"batch":[` + strings.Repeat(ev+",", 2) + ev + `]}`
		wantAnswer(t, h.post(t, "/v1/batch", body), http.StatusOK, "success.json")
	})
	t.Run("a body far over the limit is refused by its length, the rest of it unread", func(t *testing.T) {
		h := newHarness(t, small)
		conn, err := net.Dial("tcp", strings.TrimPrefix(h.base, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		// fasthttp reads the start of a body with its header; the
		// rest of the 100 MiB is never sent.
		fmt.Fprintf(conn, "POST /v1/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", 100<<20, strings.Repeat(" ", 16<<10))
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatalf("read answer: %v", err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		wantAnswer(t, answer{status: resp.StatusCode, body: body}, http.StatusBadRequest, "too_large_request.json")
		h.sp.wantNoCalls(t)
	})
}

// TestAnEventOverTheLimitCostsOnlyItself: older analytics-node counts an
// event's size short and drops a whole batch answered 400, so an event of
// a batch over --max-event-bytes is dead-lettered alone, and the rest is
// stored. --strict refuses the request as before.
func TestAnEventOverTheLimitCostsOnlyItself(t *testing.T) {
	cfg := DefaultConfig()
	cfg.MaxEventBytes = 200
	ev := `{"type":"track","userId":"u","event":"e"}`
	// 'é' is two bytes: whichever byte the limit falls on, the kept text
	// ends on a whole character.
	big := `{"type":"track","userId":"u","event":"` + strings.Repeat("é", 150) + `"}`
	tests := []struct {
		scenario string
		body     string
		index    int
		size     int
		stored   int
	}{
		{"an event of the batch", `{"batch":[` + ev + `,` + big + `,` + ev + `]}`, 1, len(big), 2},
		{"an event made too large by the batch-level context", `{"context":{"p":"` + strings.Repeat("x", 180) + `"},"batch":[` + ev + `]}`,
			0, len(`{"type":"track","userId":"u","event":"e","context":{"p":"` + strings.Repeat("x", 180) + `"}}`), 0},
	}
	for _, tt := range tests {
		t.Run(tt.scenario+" is dead-lettered alone", func(t *testing.T) {
			keyed := cfg
			keyed.WriteKeys = []string{"key-1234567890"}
			h := newHarness(t, keyed)
			a := h.post(t, "/v1/batch", tt.body, basicAuth("key-1234567890"))
			reason := fmt.Sprintf("event is %d bytes, over --max-event-bytes (200 bytes)", tt.size)
			want := fmt.Sprintf(`{"success":true,"rejected":[{"index":%d,"reason":%q}]}`, tt.index, reason)
			if a.status != http.StatusOK || string(a.body) != want {
				t.Fatalf("answer %d %s\nwant 200 %s", a.status, a.body, want)
			}
			c := h.sp.onlyCall(t)
			if len(c.dead) != 1 || len(c.events) != tt.stored {
				t.Fatalf("stored %d events and %d dead letters", len(c.events), len(c.dead))
			}
			d := c.dead[0]
			if d.Reason != spool.ReasonTooLarge || d.Error != reason || d.Size != tt.size || d.WriteKey != "key-1234567890" || !d.At.Equal(fixedNow) {
				t.Errorf("dead letter = %+v", d)
			}
			var kept string
			if err := json.Unmarshal(d.Event, &kept); err != nil {
				t.Fatalf("dead letter's event is not a JSON string: %s", d.Event)
			}
			if len(kept) > 200 || len(kept) < 199 || !utf8.ValidString(kept) || !strings.HasPrefix(kept, `{"type":"track","userId":"u","event":"`) {
				t.Errorf("dead letter keeps %d bytes: %q", len(kept), kept)
			}
			if got := testutil.ToFloat64(h.s.m.rejected["too_large"]); got != 1 {
				t.Errorf("spillway_events_rejected_total{reason=too_large} = %v, want 1", got)
			}
		})
	}
	t.Run("with --strict it refuses its whole batch", func(t *testing.T) {
		strict := cfg
		strict.Strict = true
		h := newHarness(t, strict)
		wantAnswer(t, h.post(t, "/v1/batch", `{"batch":[`+ev+`,`+big+`]}`), http.StatusBadRequest, "too_large_event_1.json")
		h.sp.wantNoCalls(t)
	})
}

func TestInvalidEvents(t *testing.T) {
	tests := []struct {
		scenario string
		event    string
		reason   string
		label    string
	}{
		{"an event that is not an object", `"hello"`, "event is not a JSON object", "not_object"},
		{"an event with no type", `{"userId":"u"}`, "type is missing", "missing_type"},
		{"an event of an unknown type", `{"type":"purchase","userId":"u"}`, "type is not one of track, identify, page, screen, group, alias", "unknown_type"},
		{"a type that is not a string", `{"type":5,"userId":"u"}`, "type is not one of track, identify, page, screen, group, alias", "unknown_type"},
		{"a track with no user", `{"type":"track","event":"e"}`, "userId or anonymousId is required", "missing_identity"},
		{"an identify with an empty userId", `{"type":"identify","userId":""}`, "userId or anonymousId is required", "missing_identity"},
		{"a track with no event", `{"type":"track","userId":"u"}`, "track requires event", "missing_event"},
		{"a track with an empty event", `{"type":"track","userId":"u","event":""}`, "track requires event", "missing_event"},
		{"a group with no groupId", `{"type":"group","userId":"u"}`, "group requires groupId", "missing_group_id"},
		{"an alias with only an anonymousId", `{"type":"alias","anonymousId":"a","previousId":"p"}`, "alias requires userId", "missing_user_id"},
		{"an alias with no previousId", `{"type":"alias","userId":"u"}`, "alias requires previousId", "missing_previous_id"},
	}
	good := `{"type":"track","userId":"u","event":"ok"}`
	for _, tt := range tests {
		t.Run(tt.scenario+" is dead-lettered and listed in the 200", func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.WriteKeys = []string{"key-1234567890"}
			h := newHarness(t, cfg)
			body := `{"writeKey":"key-1234567890","batch":[` + good + `,` + tt.event + `,` + good + `]}`
			a := h.post(t, "/v1/batch", body)
			if a.status != http.StatusOK {
				t.Fatalf("status = %d, want 200 (%s)", a.status, a.body)
			}
			want := `{"success":true,"rejected":[{"index":1,"reason":"` + tt.reason + `"}]}`
			if string(a.body) != want {
				t.Errorf("body = %s\nwant %s", a.body, want)
			}
			c := h.sp.onlyCall(t)
			if len(c.events) != 2 || len(c.dead) != 1 {
				t.Fatalf("stored %d events and %d dead letters, want 2 and 1", len(c.events), len(c.dead))
			}
			d := c.dead[0]
			if d.Reason != spool.ReasonInvalid || d.Error != tt.reason || d.WriteKey != "key-1234567890" ||
				d.Destination != "" || !d.At.Equal(fixedNow) {
				t.Errorf("dead letter = %+v", d)
			}
			if tt.label != "not_object" {
				ev := decode(t, d.Event)
				if _, ok := ev["receivedAt"]; !ok {
					t.Errorf("dead letter's event is not enriched like a stored one: %s", d.Event)
				}
			} else if string(d.Event) != tt.event {
				t.Errorf("dead letter's event = %s, want %s", d.Event, tt.event)
			}
			if got := testutil.ToFloat64(h.s.m.rejected[labelRule(t, tt.label).Code()]); got != 1 {
				t.Errorf("spillway_events_rejected_total{reason=%q} = %v, want 1", tt.label, got)
			}
		})
	}

	t.Run("the 200's body lists every rejected event", func(t *testing.T) {
		h := newHarness(t, DefaultConfig())
		a := h.post(t, "/v1/batch", `{"batch":[{"type":"track"},`+good+`,{"type":"group","userId":"u"}]}`)
		wantAnswer(t, a, http.StatusOK, "success_rejected.json")
		c := h.sp.onlyCall(t)
		if len(c.events) != 1 || len(c.dead) != 2 {
			t.Fatalf("stored %d events and %d dead letters, want 1 and 2", len(c.events), len(c.dead))
		}
	})

	t.Run("a request of only invalid events still stores them as dead letters", func(t *testing.T) {
		h := newHarness(t, DefaultConfig())
		a := h.post(t, "/v1/track", `{"event":"no user"}`)
		if a.status != http.StatusOK {
			t.Fatalf("status = %d", a.status)
		}
		c := h.sp.onlyCall(t)
		if len(c.events) != 0 || len(c.dead) != 1 {
			t.Fatalf("stored %d events and %d dead letters, want 0 and 1", len(c.events), len(c.dead))
		}
	})

	t.Run("with --strict an invalid event refuses the request and stores nothing", func(t *testing.T) {
		cfg := DefaultConfig()
		cfg.Strict = true
		h := newHarness(t, cfg)
		a := h.post(t, "/v1/batch", `{"batch":[`+good+`,{"type":"track","userId":"u"}]}`)
		wantAnswer(t, a, http.StatusBadRequest, "invalid_event_strict.json")
		h.sp.wantNoCalls(t)
		if got := testutil.ToFloat64(h.s.m.rejected[segment.RuleTrackEvent.Code()]); got != 1 {
			t.Errorf("rejected{missing_event} = %v, want 1", got)
		}
	})
}

func labelRule(t *testing.T, label string) segment.Rule {
	t.Helper()
	for r := range segment.NumRules {
		if r.Code() == label {
			return r
		}
	}
	t.Fatalf("no rule labelled %q", label)
	return 0
}

func TestSpoolErrors(t *testing.T) {
	tests := []struct {
		scenario string
		err      error
		status   int
		fixture  string
	}{
		{"a full spool answers 503 so SDKs retry", spool.ErrFull, http.StatusServiceUnavailable, "unavailable_full.json"},
		{"a closed spool answers 503 so SDKs retry", fmt.Errorf("append: %w", spool.ErrClosed), http.StatusServiceUnavailable, "unavailable_closed.json"},
		{"any other spool error answers 500", errors.New("disk on fire"), http.StatusInternalServerError, "internal.json"},
	}
	for _, tt := range tests {
		t.Run(tt.scenario, func(t *testing.T) {
			h := newHarness(t, DefaultConfig())
			h.sp.setAppend(func() error { return tt.err })
			a := h.post(t, "/v1/track", `{"userId":"u","event":"e"}`)
			wantAnswer(t, a, tt.status, tt.fixture)
			ra := a.header.Get("Retry-After")
			if tt.status == http.StatusServiceUnavailable && ra != "5" {
				t.Errorf("Retry-After = %q, want 5", ra)
			}
			if tt.status != http.StatusServiceUnavailable && ra != "" {
				t.Errorf("Retry-After = %q on a %d", ra, tt.status)
			}
			if got := testutil.ToFloat64(h.s.m.received[epTrack]); got != 0 {
				t.Errorf("received = %v after a failed Append, want 0", got)
			}
		})
	}
}

func TestPanicIsAnswered500(t *testing.T) {
	h := newHarness(t, DefaultConfig())
	h.sp.setAppend(func() error { panic("bug") })
	wantAnswer(t, h.post(t, "/v1/track", `{"userId":"u","event":"e"}`), http.StatusInternalServerError, "internal.json")
	h.sp.setAppend(nil)
	wantAnswer(t, h.post(t, "/v1/track", `{"userId":"u","event":"e"}`), http.StatusOK, "success.json")
}

func TestHealthAndShutdown(t *testing.T) {
	h := newHarness(t, DefaultConfig())
	if a := h.do(t, http.MethodGet, "/healthz", nil); a.status != http.StatusOK || string(a.body) != "ok\n" {
		t.Errorf("healthz = %d %q", a.status, a.body)
	}
	if a := h.do(t, http.MethodGet, "/readyz", nil); a.status != http.StatusOK {
		t.Errorf("readyz = %d %q, want 200", a.status, a.body)
	}

	h.sp.setReady(spool.ErrFull)
	a := h.do(t, http.MethodGet, "/readyz", nil)
	if a.status != http.StatusServiceUnavailable || string(a.body) != "not ready: spool: full\n" || a.header.Get("Retry-After") != "5" {
		t.Errorf("readyz with a full spool = %d %q Retry-After %q", a.status, a.body, a.header.Get("Retry-After"))
	}
	h.sp.setReady(nil)

	h.s.BeginShutdown()
	a = h.do(t, http.MethodGet, "/readyz", nil)
	if a.status != http.StatusServiceUnavailable || a.header.Get("Retry-After") != "5" {
		t.Errorf("readyz after BeginShutdown = %d Retry-After %q", a.status, a.header.Get("Retry-After"))
	}
	for _, path := range []string{"/v1/track", "/v1/batch"} {
		a = h.post(t, path, `{"userId":"u","event":"e","batch":[{"type":"track","userId":"u","event":"e"}]}`)
		wantAnswer(t, a, http.StatusServiceUnavailable, "unavailable_shutdown.json")
		if a.header.Get("Retry-After") != "5" {
			t.Errorf("%s after BeginShutdown: Retry-After %q", path, a.header.Get("Retry-After"))
		}
	}
	h.sp.wantNoCalls(t)
	if a := h.do(t, http.MethodGet, "/healthz", nil); a.status != http.StatusOK {
		t.Errorf("healthz after BeginShutdown = %d, want 200: the process is alive", a.status)
	}
}

// TestWaitAdmittedWaitsForCommitsInFlight: a request admitted before
// shutdown began is waited for until its commit answers it (200), while
// requests after it get 503 at once.
func TestWaitAdmittedWaitsForCommitsInFlight(t *testing.T) {
	h := newHarness(t, DefaultConfig())
	entered, release := h.sp.blockAppends()
	first := make(chan answer, 1)
	go func() { first <- h.post(t, "/v1/track", `{"userId":"u","event":"e"}`) }()
	<-entered
	h.sp.setAppend(nil)
	h.s.BeginShutdown()

	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if err := h.s.WaitAdmitted(ctx); err == nil {
		t.Fatal("WaitAdmitted returned while a commit was still pending")
	}
	wantAnswer(t, h.post(t, "/v1/track", `{"userId":"u","event":"late"}`), http.StatusServiceUnavailable, "unavailable_shutdown.json")

	close(release)
	if err := h.s.WaitAdmitted(t.Context()); err != nil {
		t.Fatalf("WaitAdmitted after the commit: %v", err)
	}
	if a := <-first; a.status != http.StatusOK {
		t.Fatalf("request admitted before shutdown: %d %s, want 200", a.status, a.body)
	}
	if n := len(h.sp.Calls()); n != 1 {
		t.Fatalf("%d requests stored, want the one admitted before shutdown", n)
	}
}

// TestWaitAdmittedTiming: WaitAdmitted returns within one poll of the last
// admitted request being answered, and at its context's deadline with
// the count still unanswered. Time is synctest's, so the bounds are exact.
func TestWaitAdmittedTiming(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s, err := New(DefaultConfig(), &fakeSpool{}, Options{}, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		s.admitted.Add(2)
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		start := time.Now()
		err = s.WaitAdmitted(ctx)
		if !errors.Is(err, context.DeadlineExceeded) || !strings.HasPrefix(err.Error(), "2 event requests still unanswered") {
			t.Errorf("WaitAdmitted with 2 requests unanswered = %v, want the count and the deadline", err)
		}
		if took := time.Since(start); took != time.Second {
			t.Errorf("WaitAdmitted gave up after %v, want its context's 1s", took)
		}

		start = time.Now()
		go func() {
			time.Sleep(time.Second)
			s.admitted.Add(-1)
			time.Sleep(time.Second)
			s.admitted.Add(-1)
		}()
		if err := s.WaitAdmitted(t.Context()); err != nil {
			t.Fatal(err)
		}
		if took := time.Since(start); took < 2*time.Second || took > 2*time.Second+admittedPoll {
			t.Errorf("WaitAdmitted returned %v after the first request, want within %v of the second's answer at 2s", took, admittedPoll)
		}
	})
}

func TestRouting(t *testing.T) {
	h := newHarness(t, DefaultConfig())
	wantAnswer(t, h.do(t, http.MethodGet, "/v2/track", nil), http.StatusNotFound, "not_found.json")
	a := h.do(t, http.MethodGet, "/v1/track", nil)
	wantAnswer(t, a, http.StatusMethodNotAllowed, "method_not_allowed.json")
	if got := a.header.Get("Allow"); got != "POST, OPTIONS" {
		t.Errorf("Allow = %q", got)
	}
	if a := h.do(t, http.MethodPost, "/healthz", nil); a.status != http.StatusMethodNotAllowed {
		t.Errorf("POST /healthz = %d, want 405", a.status)
	}
	if a := h.do(t, http.MethodGet, "/admin/dlq", nil); a.status != http.StatusNotFound {
		t.Errorf("/admin/dlq without a DLQ = %d, want 404", a.status)
	}
}

func TestMetrics(t *testing.T) {
	h := newHarness(t, DefaultConfig())
	h.post(t, "/v1/batch", `{"batch":[{"type":"track","userId":"u","event":"e"},{"type":"track","userId":"u"}]}`)
	h.post(t, "/v1/t", `{"userId":"u","event":"e"}`)
	h.post(t, "/v1/t", `{`)

	a := h.do(t, http.MethodGet, "/metrics", nil)
	if a.status != http.StatusOK {
		t.Fatalf("/metrics = %d", a.status)
	}
	for _, line := range []string{
		`spillway_events_received_total{endpoint="batch"} 2`,
		`spillway_events_received_total{endpoint="track"} 1`,
		`spillway_events_received_total{endpoint="import"} 0`,
		`spillway_events_rejected_total{reason="missing_event"} 1`,
		`spillway_events_rejected_total{reason="not_object"} 0`,
		`spillway_request_errors_total{code="invalid_json"} 1`,
		`spillway_request_errors_total{code="unavailable"} 0`,
		`spillway_request_duration_seconds_count{endpoint="track"} 2`,
		`spillway_request_duration_seconds_count{endpoint="alias"} 0`,
	} {
		if !bytes.Contains(a.body, []byte(line+"\n")) {
			t.Errorf("/metrics lacks %s", line)
		}
	}
}

// TestConcurrentRequestsKeepTheirOwnEvents guards the pooled buffers: a
// request's events must be its own, whatever runs beside it.
func TestConcurrentRequestsKeepTheirOwnEvents(t *testing.T) {
	h := newHarness(t, DefaultConfig())
	const workers, perWorker = 8, 20
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range perWorker {
				var b strings.Builder
				b.WriteString(`{"batch":[`)
				n := 1 + (w+i)%7
				for j := range n {
					if j > 0 {
						b.WriteByte(',')
					}
					fmt.Fprintf(&b, `{"type":"track","userId":"w%d-r%d","event":"e%d","properties":{"pad":"%s"}}`, w, i, j, strings.Repeat("p", 100*j))
				}
				b.WriteString(`]}`)
				req, _ := http.NewRequest(http.MethodPost, h.base+"/v1/batch", strings.NewReader(b.String()))
				req.Header.Set("Authorization", "Basic "+basicToken(fmt.Sprintf("key-w%d-r%d", w, i)))
				resp, err := h.client.Do(req)
				if err != nil {
					t.Error(err)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					t.Errorf("status %d", resp.StatusCode)
				}
			}
		})
	}
	wg.Wait()
	calls := h.sp.Calls()
	if len(calls) != workers*perWorker {
		t.Fatalf("%d Appends, want %d", len(calls), workers*perWorker)
	}
	for _, c := range calls {
		user := decode(t, c.events[0].Data)["userId"].(string)
		for j, e := range c.events {
			ev := decode(t, e.Data)
			if ev["userId"] != user || ev["event"] != fmt.Sprintf("e%d", j) || e.WriteKey != "key-"+user {
				t.Fatalf("event %d of %s's request is someone else's: key %q %s", j, user, e.WriteKey, e.Data)
			}
		}
	}
}

// TestShutdownLetsAppendsFinish: shutdown must not cut an Append short, or
// a client could get a 503 for events that are stored (a duplicate on its
// retry) or no answer at all.
func TestShutdownLetsAppendsFinish(t *testing.T) {
	h := newHarness(t, DefaultConfig())
	entered, release := h.sp.blockAppends()
	type result struct {
		status int
		body   string
		err    error
	}
	res := make(chan result, 1)
	go func() {
		resp, err := h.client.Post(h.base+"/v1/track", "application/json", strings.NewReader(`{"userId":"u","event":"e"}`))
		if err != nil {
			res <- result{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		res <- result{resp.StatusCode, string(b), err}
	}()
	<-entered

	shut := make(chan error, 1)
	go func() { shut <- h.s.Shutdown(t.Context()) }()
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned (%v) while an Append was in flight", err)
	case <-time.After(200 * time.Millisecond):
	}
	close(release)
	r := <-res
	if r.err != nil || r.status != http.StatusOK || r.body != `{"success":true}` {
		t.Errorf("in-flight request got %d %q %v, want its 200", r.status, r.body, r.err)
	}
	if err := <-shut; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	h.sp.onlyCall(t)
}
