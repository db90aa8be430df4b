package forwarders

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/spillwayhq/spillway/internal/testkit"
	"github.com/spillwayhq/spillway/spool"
)

// testStore is a store the tests fill and whose dead letters they read:
// the real spool, or memStore.
type testStore interface {
	store
	Append(ctx context.Context, events []spool.Event, dead []spool.DeadLetter) error
	DeadLetters(f spool.Filter, fn func(spool.DeadLetter) error) error
}

var (
	_ testStore = (*spool.Spool)(nil)
	_ testStore = (*memStore)(nil)
)

// memStore is the spool as the Dispatcher sees it, in memory: for the
// tests of delivery, which need no disk, and which under testing/synctest
// run on the bubble's clock. Its faults are set by the test.
type memStore struct {
	mu        sync.Mutex
	events    []spool.Record // Seq is the index
	dests     []string       // per event: the only consumer that reads it, or ""
	consumers map[string]*memCursor
	dead      []spool.DeadLetter
	changed   chan struct{}
	parked    map[memLane][]spool.Record // the lane log, each by Seq (lanes_fakes_test.go)

	// readErr, ackErr and deadErr, while set, fail ReadInto, Ack and
	// DeadLetter; reads, acks and deadLetterCalls count the calls.
	readErr, ackErr, deadErr     error
	reads, acks, deadLetterCalls int
}

type memCursor struct {
	pos    uint64 // where the next read starts
	cursor uint64 // everything below is acknowledged
}

func newMemStore(consumers ...string) *memStore {
	m := &memStore{consumers: map[string]*memCursor{}, changed: make(chan struct{})}
	for _, c := range consumers {
		m.consumers[c] = &memCursor{}
	}
	return m
}

func (m *memStore) Append(_ context.Context, events []spool.Event, dead []spool.DeadLetter) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := time.Now()
	for _, e := range events {
		m.events = append(m.events, spool.Record{Seq: uint64(len(m.events)), WriteKey: e.WriteKey,
			Data: append([]byte(nil), e.Data...), Stored: now})
		m.dests = append(m.dests, e.Dest)
	}
	m.dead = append(m.dead, dead...)
	close(m.changed)
	m.changed = make(chan struct{})
	return nil
}

func (m *memStore) consumer(name string) (*memCursor, error) {
	c, ok := m.consumers[name]
	if !ok {
		return nil, fmt.Errorf("memstore: unknown consumer %q", name)
	}
	return c, nil
}

// ReadInto reads as the spool does: at least one record when there is
// one, skipping those meant for another consumer.
func (m *memStore) ReadInto(consumer string, recs []spool.Record, arena []byte, maxEvents, maxBytes int) ([]spool.Record, []byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.reads++
	c, err := m.consumer(consumer)
	if err != nil {
		return recs, arena, err
	}
	if m.readErr != nil {
		return recs, arena, m.readErr
	}
	first, bytes := len(recs), 0
	for ; c.pos < uint64(len(m.events)) && len(recs)-first < maxEvents && (bytes < maxBytes || len(recs) == first); c.pos++ {
		if d := m.dests[c.pos]; d == "" || d == consumer {
			recs = append(recs, m.events[c.pos])
			bytes += len(m.events[c.pos].Data)
		}
	}
	return recs, moveData(arena, recs[first:]), nil
}

func (m *memStore) Changed() <-chan struct{} {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.changed
}

func (m *memStore) Ack(consumer string, upTo uint64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.acks++
	c, err := m.consumer(consumer)
	if err != nil {
		return err
	}
	if m.ackErr != nil {
		return m.ackErr
	}
	c.cursor = max(c.cursor, upTo)
	c.pos = max(c.pos, upTo)
	return nil
}

func (m *memStore) Position(consumer string) uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	if c, err := m.consumer(consumer); err == nil {
		return c.pos
	}
	return 0
}

func (m *memStore) Rewind(consumer string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	c, err := m.consumer(consumer)
	if err == nil {
		c.pos = c.cursor
	}
	return err
}

func (m *memStore) Backlog(consumer string) spool.Backlog {
	m.mu.Lock()
	defer m.mu.Unlock()
	c, err := m.consumer(consumer)
	if err != nil || c.cursor >= uint64(len(m.events)) {
		return spool.Backlog{}
	}
	return spool.Backlog{Events: int64(uint64(len(m.events)) - c.cursor), Oldest: m.events[c.cursor].Stored}
}

func (m *memStore) DeadLetter(_ context.Context, dls []spool.DeadLetter) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.deadLetterCalls++
	if m.deadErr != nil {
		return m.deadErr
	}
	m.dead = append(m.dead, dls...)
	return nil
}

func (m *memStore) DeadLetters(f spool.Filter, fn func(spool.DeadLetter) error) error {
	m.mu.Lock()
	dead := append([]spool.DeadLetter(nil), m.dead...)
	m.mu.Unlock()
	for _, d := range dead {
		if !f.Matches(&d) {
			continue
		}
		if err := fn(d); err != nil {
			return err
		}
	}
	return nil
}

// fail sets the faults; nil clears one.
func (m *memStore) fail(read, ack, dead error) {
	m.mu.Lock()
	m.readErr, m.ackErr, m.deadErr = read, ack, dead
	m.mu.Unlock()
}

// calls returns how many reads, acks and dead-letter writes were asked.
func (m *memStore) calls() (reads, acks, dead int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.reads, m.acks, m.deadLetterCalls
}

// fakeForwarder is a Forwarder whose answers the test gives: answer
// returns the outcome of the n-th send (from 0), and may block, on the
// bubble's clock under testing/synctest. nil delivers everything.
type fakeForwarder struct {
	answer func(ctx context.Context, n int, batch []spool.Record) error

	mu       sync.Mutex
	sends    []fakeSend
	inFlight int
	most     int // the most sends in flight at once
	closed   bool
}

// fakeSend is one call of Send.
type fakeSend struct {
	at, done time.Time
	ids      []string
	err      error
}

var _ Forwarder = (*fakeForwarder)(nil)

func (f *fakeForwarder) Kind() string { return "fake" }

func (f *fakeForwarder) Send(ctx context.Context, batch []spool.Record) error {
	// The dispatcher reuses a batch's memory once Send returns: keep ids.
	s := fakeSend{at: time.Now(), ids: make([]string, len(batch))}
	for i, r := range batch {
		s.ids[i] = testkit.MessageID(r.Data)
	}
	f.mu.Lock()
	n := len(f.sends)
	f.sends = append(f.sends, s)
	f.inFlight++
	f.most = max(f.most, f.inFlight)
	f.mu.Unlock()

	var err error
	if f.answer != nil {
		err = f.answer(ctx, n, batch)
	}

	f.mu.Lock()
	defer f.mu.Unlock()
	f.inFlight--
	f.sends[n].done, f.sends[n].err = time.Now(), err
	return err
}

func (f *fakeForwarder) Close(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	return nil
}

// calls returns a copy of the sends so far.
func (f *fakeForwarder) calls() []fakeSend {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]fakeSend(nil), f.sends...)
}

// mostAtOnce is the most sends that were in flight at once.
func (f *fakeForwarder) mostAtOnce() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.most
}

// delivered returns the ids of the sends that succeeded, in order.
func (f *fakeForwarder) delivered() []string {
	var out []string
	for _, s := range f.calls() {
		if s.err == nil {
			out = append(out, s.ids...)
		}
	}
	return out
}

// hang blocks a send until its context ends, as a destination that never
// answers does.
func hang(ctx context.Context, _ int, _ []spool.Record) error {
	<-ctx.Done()
	return fmt.Errorf("post: %w", ctx.Err())
}

// failing answers every send with err.
func failing(err error) func(context.Context, int, []spool.Record) error {
	return func(context.Context, int, []spool.Record) error { return err }
}

// errDown is a destination's retryable failure: the one an HTTP 503 gives.
var errDown = withBody(classify(http.StatusServiceUnavailable, nil), "down")
