package proxy

import (
	"bytes"
	"encoding/json"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/spillwayhq/spillway/internal/segment"
	"github.com/spillwayhq/spillway/spool"
)

const (
	// tailSize is how many received events the live tail holds: enough
	// for a person to read, small enough to be nothing in a sidecar's
	// memory (at most tailSize * --max-event-bytes).
	tailSize = 200
	// tailIdle is how long the tail keeps recording after its last reader.
	// Nothing is recorded, and no event is held in memory, while nobody
	// watches: events are personal data and the hot path should not pay
	// for a view nobody has open.
	tailIdle = time.Minute
)

// tailRing holds the latest events stored by the event endpoints, for
// GET /admin/events (the /ui page and `spillway tail`). Its zero value is
// ready. Write keys are never recorded: a stored event's JSON has none
// (writeKey is stripped at ingest) and the key beside it is not copied.
type tailRing struct {
	// watchedUntil is when recording stops (unix ns); 0 until the first
	// reader, so an unwatched proxy pays one atomic load per request.
	watchedUntil atomic.Int64
	holding      atomic.Bool // some slot holds an event

	mu    sync.Mutex
	last  uint64 // seq of the newest event recorded; seqs start at 1
	slots [tailSize]tailSlot
}

type tailSlot struct {
	seq     uint64 // 0: empty
	at      int64  // unix ns
	ep      endpoint
	invalid string // "", or why the event was dead-lettered at ingest
	data    []byte // reused by the next event in this slot
	// violations are those of an event the tracking plan blocked (a
	// flagged one holds its own in context.violations).
	violations []byte
}

// watch keeps recording on for tailIdle from now.
func (t *tailRing) watch(now time.Time) {
	t.watchedUntil.Store(now.Add(tailIdle).UnixNano())
}

// watched reports whether someone polled the tail recently enough that
// record would keep events.
func (t *tailRing) watched(now time.Time) bool {
	until := t.watchedUntil.Load()
	return until != 0 && now.UnixNano() <= until
}

// record copies the events of one successful Append, if someone watches.
// It must not keep the slices it is given; it copies into buffers it
// reuses, so a watched proxy allocates nothing once they have grown.
func (t *tailRing) record(ep endpoint, now time.Time, events []spool.Event, dead []spool.DeadLetter, rejected []rejection) {
	until := t.watchedUntil.Load()
	if until == 0 {
		return
	}
	if now.UnixNano() > until {
		if t.holding.Load() {
			t.dropUnwatched(now)
		}
		return
	}
	at := now.UnixNano()
	// Only the last tailSize events of a huge request can be held; the
	// others still take a seq, so readers learn that they missed some.
	n := len(events) + len(dead)
	skip := n - tailSize
	t.mu.Lock()
	// The request's order is kept: rejected[i].index is where dead[i] was.
	var ei, di int
	for k := range n {
		if di < len(dead) && (di >= len(rejected) || rejected[di].index == k || ei == len(events)) {
			if k >= skip {
				why := segment.RuleNotObject.String()
				if di < len(rejected) {
					why = rejected[di].text
				}
				t.put(at, ep, why, dead[di].Event, dead[di].Violations)
			} else {
				t.last++
			}
			di++
			continue
		}
		if k >= skip {
			t.put(at, ep, "", events[ei].Data, nil)
		} else {
			t.last++
		}
		ei++
	}
	t.holding.Store(true)
	t.mu.Unlock()
}

func (t *tailRing) put(at int64, ep endpoint, invalid string, data, violations []byte) {
	t.last++
	s := &t.slots[t.last%tailSize]
	s.seq, s.at, s.ep, s.invalid = t.last, at, ep, invalid
	s.data = append(s.data[:0], data...)
	s.violations = append(s.violations[:0], violations...)
}

// dropUnwatched forgets every event held once nobody has watched for
// tailIdle, so personal data does not linger in memory.
func (t *tailRing) dropUnwatched(now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if now.UnixNano() <= t.watchedUntil.Load() {
		return
	}
	for i := range t.slots {
		t.slots[i] = tailSlot{}
	}
	t.holding.Store(false)
}

// TailEvent is one event of GET /admin/events.
type TailEvent struct {
	// Seq orders received events; it restarts at 1 with the process.
	Seq        uint64    `json:"seq"`
	ReceivedAt time.Time `json:"received_at"`
	Endpoint   string    `json:"endpoint"`
	Type       string    `json:"type,omitempty"`
	// Invalid, when set, is why the event was dead-lettered at ingest (a
	// Segment spec rule broken, over --max-event-bytes): it went to the
	// dead-letter store, not to any destination.
	Invalid string `json:"invalid,omitempty"`
	// Violations are the tracking plan's violations of the event: those
	// that blocked it, or those it was stored with (context.violations).
	Violations json.RawMessage `json:"violations,omitempty"`
	// Event is the event as stored: enriched, without its writeKey.
	Event json.RawMessage `json:"event"`
}

// TailPage is the answer of GET /admin/events.
type TailPage struct {
	// Next is the cursor to send as ?since= next time.
	Next uint64 `json:"next"`
	// Missed counts events received after the cursor that are no longer
	// held (more than the tail holds arrived between two polls).
	Missed uint64      `json:"missed"`
	Events []TailEvent `json:"events"`
}

// read copies the events held after since, oldest first. A cursor from the
// future (the process restarted) reads from the start.
func (t *tailRing) read(since uint64) (page TailPage, slots []tailSlot) {
	t.mu.Lock()
	defer t.mu.Unlock()
	page.Next = t.last
	if since > t.last {
		since = 0
	}
	lo := since + 1
	if t.last >= tailSize && lo < t.last-tailSize+1 {
		if since > 0 {
			page.Missed = t.last - tailSize + 1 - lo
		}
		lo = t.last - tailSize + 1
	}
	for seq := lo; seq <= t.last; seq++ {
		s := t.slots[seq%tailSize]
		if s.seq != seq {
			continue // dropped while nobody watched
		}
		s.data = bytes.Clone(s.data)
		s.violations = bytes.Clone(s.violations)
		slots = append(slots, s)
	}
	return page, slots
}

// handleTail serves GET /admin/events?since=SEQ&destination=NAME&type=T&limit=N:
// the latest events received after the cursor SEQ (default 0: all held),
// at most N (default and most: 200), newest last, as a TailPage. It is
// meant to be polled about once a second. Events are personal data, so the
// rule of /admin/dlq applies: a loopback client or the admin token.
func (s *Server) handleTail(ctx *fasthttp.RequestCtx) {
	if !onlyGet(ctx) || !s.adminAllowed(ctx) {
		return
	}
	q, err := s.tailQuery(ctx.QueryArgs())
	if err != nil {
		writeError(ctx, err)
		return
	}
	s.tail.watch(s.now())
	page, slots := s.tail.read(q.since)
	page.Events = q.pick(slots)
	b, err := json.Marshal(page)
	if err != nil {
		writeError(ctx, err)
		return
	}
	ctx.Response.Header.Set(fasthttp.HeaderCacheControl, "no-store")
	ctx.SetContentType("application/json")
	ctx.SetBody(append(b, '\n'))
}

// tailQuery is what a GET /admin/events asks for.
type tailQuery struct {
	since uint64
	limit int
	typ   string            // "": any
	wants func([]byte) bool // nil: any destination
}

// tailQuery reads the query of GET /admin/events.
func (s *Server) tailQuery(args *fasthttp.Args) (tailQuery, error) {
	q := tailQuery{limit: tailSize, typ: string(args.Peek("type"))}
	if v := args.Peek("since"); len(v) > 0 {
		n, err := strconv.ParseUint(string(v), 10, 64)
		if err != nil {
			return q, badRequest(errInvalidQuery, "since must be a whole number >= 0")
		}
		q.since = n
	}
	if v := args.Peek("limit"); len(v) > 0 {
		n, err := strconv.Atoi(string(v))
		if err != nil || n < 1 || n > tailSize {
			return q, badRequest(errInvalidQuery, "limit must be a whole number in 1..200")
		}
		q.limit = n
	}
	if name := string(args.Peek("destination")); name != "" {
		if s.opts.Route != nil {
			q.wants = s.opts.Route(name)
		}
		if q.wants == nil {
			return q, badRequest(errInvalidQuery, "unknown destination "+strconv.Quote(name))
		}
	}
	return q, nil
}

// pick returns the events of slots, oldest first, that the query asks
// for: the newest q.limit of them, newest last, as a log reads.
func (q tailQuery) pick(slots []tailSlot) []TailEvent {
	events := make([]TailEvent, 0, min(len(slots), q.limit))
	for i := len(slots) - 1; i >= 0 && len(events) < q.limit; i-- {
		sl := slots[i]
		e := TailEvent{
			Seq:        sl.seq,
			ReceivedAt: time.Unix(0, sl.at).UTC(),
			Endpoint:   sl.ep.String(),
			Type:       eventType(sl.data),
			Invalid:    sl.invalid,
			Violations: violationsOf(sl),
			Event:      sl.data,
		}
		if (q.typ != "" && e.Type != q.typ) || (q.wants != nil && (e.Invalid != "" || !q.wants(sl.data))) {
			continue
		}
		if !json.Valid(e.Event) {
			e.Event, _ = json.Marshal(string(sl.data))
		}
		events = append(events, e)
	}
	slices.Reverse(events)
	return events
}

// violationsOf is the tracking plan's violations of a slot's event, if
// any: kept beside a blocked one, inside a flagged one.
func violationsOf(sl tailSlot) json.RawMessage {
	if len(sl.violations) > 0 {
		return sl.violations
	}
	if !bytes.Contains(sl.data, []byte(`"violations"`)) {
		return nil
	}
	var v struct {
		Context struct {
			Violations json.RawMessage `json:"violations"`
		} `json:"context"`
	}
	if json.Unmarshal(sl.data, &v) != nil {
		return nil
	}
	return v.Context.Violations
}

// eventType is the event's "type", or "" when it has none.
func eventType(data []byte) string {
	var v struct {
		Type string `json:"type"`
	}
	if json.Unmarshal(data, &v) != nil {
		return ""
	}
	return v.Type
}
