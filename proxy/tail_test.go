package proxy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/spillwayhq/spillway/internal/segment"
	"github.com/spillwayhq/spillway/spool"
)

func getTail(t *testing.T, h *harness, query string, headers ...string) TailPage {
	t.Helper()
	a := h.do(t, http.MethodGet, "/admin/events"+query, nil, headers...)
	if a.status != http.StatusOK {
		t.Fatalf("GET /admin/events%s = %d %s", query, a.status, a.body)
	}
	var p TailPage
	if err := json.Unmarshal(a.body, &p); err != nil {
		t.Fatalf("decode %s: %v", a.body, err)
	}
	return p
}

func tailIDs(p TailPage) []string {
	var ids []string
	for _, e := range p.Events {
		var v struct {
			MessageID string `json:"messageId"`
		}
		_ = json.Unmarshal(e.Event, &v)
		ids = append(ids, v.MessageID)
	}
	return ids
}

func TestTail(t *testing.T) {
	batch := `{"writeKey":"wk-secret-1234","batch":[
		{"type":"track","event":"Signed Up","userId":"u1","messageId":"m1"},
		{"type":"identify","userId":"u1","messageId":"m2","traits":{"plan":"pro"}},
		{"type":"track","userId":"u1","messageId":"m3"},
		{"type":"page","anonymousId":"a1","name":"Home","messageId":"m4"}]}`

	t.Run("nothing is recorded before someone watches", func(t *testing.T) {
		h := newHarness(t, DefaultConfig())
		h.post(t, "/v1/batch", batch)
		if p := getTail(t, h, ""); len(p.Events) != 0 || p.Next != 0 {
			t.Fatalf("tail before any watcher = %+v, want empty", p)
		}
		h.post(t, "/v1/batch", batch)
		p := getTail(t, h, "")
		if got := strings.Join(tailIDs(p), ","); got != "m1,m2,m3,m4" || p.Next != 4 {
			t.Fatalf("tail = %s next %d, want m1..m4 next 4", got, p.Next)
		}
	})

	t.Run("events after the cursor come oldest first, enriched, with no write key", func(t *testing.T) {
		h := newHarness(t, DefaultConfig())
		getTail(t, h, "")
		h.post(t, "/v1/track", `{"type":"track","event":"First","userId":"u","messageId":"m0"}`, basicAuth("wk-secret-1234"))
		first := getTail(t, h, "")
		h.post(t, "/v1/batch", batch)
		a := h.do(t, http.MethodGet, fmt.Sprintf("/admin/events?since=%d", first.Next), nil)
		if bytes.Contains(a.body, []byte("wk-secret")) {
			t.Fatalf("the tail shows a write key: %s", a.body)
		}
		if cc := a.header.Get("Cache-Control"); cc != "no-store" {
			t.Errorf("Cache-Control = %q, want no-store", cc)
		}
		var p TailPage
		if err := json.Unmarshal(a.body, &p); err != nil {
			t.Fatal(err)
		}
		if got := strings.Join(tailIDs(p), ","); got != "m1,m2,m3,m4" {
			t.Fatalf("events = %s, want m1,m2,m3,m4", got)
		}
		e := p.Events[0]
		if e.Seq != 2 || e.Type != "track" || e.Endpoint != "batch" || !e.ReceivedAt.Equal(fixedNow) || e.Invalid != "" {
			t.Errorf("first event = %+v", e)
		}
		if ev := decode(t, e.Event); ev["receivedAt"] == nil {
			t.Errorf("event is not the stored, enriched one: %s", e.Event)
		}
		if p.Events[2].Invalid != segment.RuleTrackEvent.String() {
			t.Errorf("a track without event: invalid = %q, want %q", p.Events[2].Invalid, segment.RuleTrackEvent.String())
		}
		if again := getTail(t, h, fmt.Sprintf("?since=%d", p.Next)); len(again.Events) != 0 {
			t.Errorf("polling at the cursor again returned %d events, want 0", len(again.Events))
		}
	})

	t.Run("filters by type, by destination and by count", func(t *testing.T) {
		route := func(name string) func([]byte) bool {
			if name != "tracks" {
				return nil
			}
			return func(e []byte) bool { return bytes.Contains(e, []byte(`"type":"track"`)) }
		}
		h := newHarness(t, DefaultConfig(), withOptions(Options{Route: route}))
		getTail(t, h, "")
		h.post(t, "/v1/batch", batch)
		for query, want := range map[string]string{
			"?type=identify":       "m2",
			"?type=track":          "m1,m3",
			"?destination=tracks":  "m1", // m3 is invalid: no destination gets it
			"?limit=2":             "m3,m4",
			"?type=track&limit=1":  "m3",
			"?type=screen":         "",
			"?since=2&type=track":  "m3",
			"?since=99&type=alias": "", // a cursor from before a restart
		} {
			if got := strings.Join(tailIDs(getTail(t, h, query)), ","); got != want {
				t.Errorf("%s: events = %q, want %q", query, got, want)
			}
		}
		for _, query := range []string{"?destination=nope", "?since=-1", "?limit=0", "?limit=201"} {
			if a := h.do(t, http.MethodGet, "/admin/events"+query, nil); a.status != http.StatusBadRequest {
				t.Errorf("%s = %d, want 400", query, a.status)
			}
		}
	})

	t.Run("events are personal data: the rule of /admin/dlq applies", func(t *testing.T) {
		cfg := DefaultConfig()
		cfg.AdminToken = "s3cret"
		h := newHarness(t, cfg, withRemote(&net.TCPAddr{IP: net.IPv4(10, 1, 2, 3), Port: 40000}))
		if a := h.do(t, http.MethodGet, "/admin/events", nil); a.status != http.StatusForbidden {
			t.Errorf("a remote client without the token: %d, want 403", a.status)
		}
		h.post(t, "/v1/batch", batch)
		getTail(t, h, "", "Authorization: Bearer s3cret")
	})
}

func TestTailRing(t *testing.T) {
	ev := func(id int) spool.Event {
		return spool.Event{WriteKey: "wk", Data: fmt.Appendf(nil, `{"type":"track","messageId":"m%d"}`, id)}
	}
	events := func(from, n int) []spool.Event {
		var out []spool.Event
		for i := range n {
			out = append(out, ev(from+i))
		}
		return out
	}
	now := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)

	t.Run("a reader that falls behind learns how many it missed", func(t *testing.T) {
		var r tailRing
		r.watch(now)
		r.record(epBatch, now, events(1, 1), nil, nil)
		p, _ := r.read(0)
		r.record(epBatch, now, events(2, 250), nil, nil)
		p, slots := r.read(p.Next)
		if p.Next != 251 || p.Missed != 50 || len(slots) != tailSize || slots[0].seq != 52 {
			t.Fatalf("next %d missed %d held %d first %d; want 251, 50, %d, 52", p.Next, p.Missed, len(slots), slots[0].seq, tailSize)
		}
		if string(slots[0].data) != `{"type":"track","messageId":"m52"}` {
			t.Errorf("first held = %s", slots[0].data)
		}
	})

	t.Run("what is held is dropped once nobody has watched for a while", func(t *testing.T) {
		var r tailRing
		r.watch(now)
		r.record(epTrack, now, events(1, 3), nil, nil)
		later := now.Add(tailIdle + time.Second)
		r.record(epTrack, later, events(4, 1), nil, nil)
		if r.holding.Load() {
			t.Fatal("still holding events after nobody watched for tailIdle")
		}
		for i := range r.slots {
			if r.slots[i].data != nil {
				t.Fatalf("slot %d still holds %s", i, r.slots[i].data)
			}
		}
		r.watch(later)
		r.record(epTrack, later, events(5, 1), nil, nil)
		p, slots := r.read(0)
		if p.Next != 4 || len(slots) != 1 || slots[0].seq != 4 {
			t.Fatalf("after watching again: next %d, %d held; want next 4 and one held", p.Next, len(slots))
		}
	})

	t.Run("recording reuses its buffers", func(t *testing.T) {
		var r tailRing
		r.watch(now)
		batch := events(1, 100)
		r.record(epBatch, now, batch, nil, nil)
		r.record(epBatch, now, batch, nil, nil)
		if allocs := testing.AllocsPerRun(20, func() { r.record(epBatch, now, batch, nil, nil) }); allocs > 0 {
			t.Errorf("recording 100 events costs %.0f allocations, want 0", allocs)
		}
	})
}

func TestUI(t *testing.T) {
	h := newHarness(t, DefaultConfig())
	a := h.do(t, http.MethodGet, "/ui", nil)
	if a.status != http.StatusOK || !strings.HasPrefix(a.header.Get("Content-Type"), "text/html") {
		t.Fatalf("GET /ui = %d %s", a.status, a.header.Get("Content-Type"))
	}
	csp := a.header.Get("Content-Security-Policy")
	if !strings.Contains(csp, "default-src 'none'") || !strings.Contains(csp, "connect-src 'self'") {
		t.Errorf("Content-Security-Policy = %q, want nothing but this server", csp)
	}
	page := string(a.body)
	// Self-contained: nothing is loaded from anywhere, not even this server.
	for _, ref := range []string{`src=`, `href="http`, `href="/`, `url(`, `@import`, `//cdn`} {
		if strings.Contains(page, ref) {
			t.Errorf("the page refers to something outside itself: %q", ref)
		}
	}
	for _, api := range []string{"/admin/status", "/admin/events"} {
		if !strings.Contains(page, api) {
			t.Errorf("the page does not use %s", api)
		}
	}
	if a := h.do(t, http.MethodPost, "/ui", nil); a.status != http.StatusMethodNotAllowed {
		t.Errorf("POST /ui = %d, want 405", a.status)
	}
}
