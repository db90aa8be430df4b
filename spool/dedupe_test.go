package spool

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/spillwayhq/spillway/internal/testkit"
)

// fakeClock is the index's clock in these tests: the window is a day, and
// days pass at the test's word.
type fakeClock struct{ ns atomic.Int64 }

func newFakeClock() *fakeClock {
	c := &fakeClock{}
	c.ns.Store(time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	return c
}

func (c *fakeClock) now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) advance(d time.Duration) { c.ns.Add(int64(d)) }

type dedupeSpool struct {
	*Spool
	reg *prometheus.Registry
}

func openDedupeTest(t *testing.T, dir string, clock *fakeClock, maxBytes int64) dedupeSpool {
	t.Helper()
	reg := prometheus.NewRegistry()
	cfg := Config{Dir: dir, Consumers: []string{"a"}, DedupeWindow: DefaultDedupeWindow, DedupeMaxBytes: maxBytes}
	if clock != nil {
		cfg.now = clock.now
	}
	s, err := Open(cfg, nil, reg)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	return dedupeSpool{s, reg}
}

// withIDs gives events() messageIds id-from ... id-(from+n-1).
func withIDs(from, n int) []Event {
	evs := events(from, n)
	for i := range evs {
		evs[i].MessageID = fmt.Appendf(nil, "id-%d", from+i)
	}
	return evs
}

func (s dedupeSpool) appendFrom(t *testing.T, evs []Event) int {
	t.Helper()
	skipped, err := s.AppendFrom(t.Context(), SourceHTTP, evs, nil)
	if err != nil {
		t.Fatalf("append: %v", err)
	}
	return skipped
}

func (s dedupeSpool) deduplicated() float64 {
	return testutil.ToFloat64(s.dedupe.deduplicated.WithLabelValues(SourceHTTP))
}

func (s dedupeSpool) windowHeld(t *testing.T) time.Duration {
	t.Helper()
	mfs, err := s.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "spillway_dedupe_window_seconds" {
			return time.Duration(mf.GetMetric()[0].GetGauge().GetValue() * float64(time.Second))
		}
	}
	t.Fatal("no spillway_dedupe_window_seconds")
	return 0
}

// setOpenMax makes the index write a run every n keys, as it does every
// 32k (dedupeOpenMax).
func (s dedupeSpool) setOpenMax(n int) {
	s.dedupe.mu.Lock()
	s.dedupe.openMax = n
	s.dedupe.mu.Unlock()
}

// settle waits until the frozen keys are in runs.
func (s dedupeSpool) settle(t *testing.T) {
	t.Helper()
	testkit.Eventually(t, func() bool {
		s.dedupe.mu.Lock()
		defer s.dedupe.mu.Unlock()
		return len(s.dedupe.frozen) == 0
	}, "the index's runs written")
}

func countData(recs []Record) map[string]int {
	n := map[string]int{}
	for _, r := range recs {
		n[string(r.Data)]++
	}
	return n
}

func TestTheSameBatchTwiceIsStoredOnceBeforeAndAfterARestart(t *testing.T) {
	dir := t.TempDir()
	s := openDedupeTest(t, dir, nil, 0)
	batch := withIDs(0, 50)
	if got := s.appendFrom(t, batch); got != 0 {
		t.Fatalf("first send skipped %d", got)
	}
	if got := s.appendFrom(t, batch); got != 50 {
		t.Fatalf("second send skipped %d, want 50", got)
	}
	if got := s.deduplicated(); got != 50 {
		t.Fatalf("spillway_events_deduplicated_total = %v, want 50", got)
	}
	if err := s.Close(t.Context()); err != nil {
		t.Fatal(err)
	}

	s = openDedupeTest(t, dir, nil, 0)
	defer s.Close(context.Background())
	if got := s.appendFrom(t, batch); got != 50 {
		t.Fatalf("after a restart the batch skipped %d, want 50", got)
	}
	if got := s.deduplicated(); got != 50 {
		t.Fatalf("after a restart spillway_events_deduplicated_total = %v, want 50", got)
	}
	for data, n := range countData(readAll(t, s.Spool, "a")) {
		if n != 1 {
			t.Fatalf("%s stored %d times", data, n)
		}
	}
}

// An idle spool shrinks the index's open map (maps do not shrink by
// themselves): the keys in it must survive the move.
func TestKeysHeldInMemoryAreStillFoundAfterAnIdleRelease(t *testing.T) {
	s := openDedupeTest(t, t.TempDir(), nil, 0)
	defer s.Close(context.Background())
	batch := withIDs(0, 50)
	s.appendFrom(t, batch)
	s.dedupe.mu.Lock()
	held := len(s.dedupe.open)
	s.dedupe.mu.Unlock()
	if held != 50 {
		t.Fatalf("%d keys in the open map, want the batch's 50 (none written to a run yet)", held)
	}
	s.releaseMemory()
	if got := s.appendFrom(t, batch); got != 50 {
		t.Fatalf("after the release the batch skipped %d, want 50", got)
	}
}

func TestOnlyTheSameWriteKeyAndMessageIDIsADuplicate(t *testing.T) {
	s := openDedupeTest(t, t.TempDir(), nil, 0)
	defer s.Close(context.Background())
	first := withIDs(0, 1)
	otherKey := withIDs(0, 1)
	otherKey[0].WriteKey = "another"
	noID := events(0, 1) // spillway assigned its messageId
	inRequest := append(withIDs(10, 2), withIDs(10, 2)...)
	for _, c := range []struct {
		scenario string
		evs      []Event
		skipped  int
	}{
		{"a first event is stored", first, 0},
		{"the same messageId under another write key is stored", otherKey, 0},
		{"events without a client messageId are always stored", noID, 0},
		{"again", noID, 0},
		{"a copy within one request is skipped", inRequest, 2},
	} {
		if got := s.appendFrom(t, c.evs); got != c.skipped {
			t.Fatalf("%s: skipped %d, want %d", c.scenario, got, c.skipped)
		}
	}
	if got, want := len(readAll(t, s.Spool, "a")), 1+1+2+2; got != want {
		t.Fatalf("read %d events, want %d", got, want)
	}
}

func TestAppendStoresEveryEventItIsGiven(t *testing.T) {
	s := openDedupeTest(t, t.TempDir(), nil, 0)
	defer s.Close(context.Background())
	s.appendFrom(t, withIDs(0, 3))
	// A replayed dead letter is stored again on purpose.
	if err := s.Append(t.Context(), withIDs(0, 3), nil); err != nil {
		t.Fatal(err)
	}
	if got := len(readAll(t, s.Spool, "a")); got != 6 {
		t.Fatalf("read %d events, want 6", got)
	}
}

func TestConcurrentCopiesAreStoredOnce(t *testing.T) {
	s := openDedupeTest(t, t.TempDir(), nil, 0)
	defer s.Close(context.Background())
	const senders, ids = 8, 200
	var skipped atomic.Int64
	var wg sync.WaitGroup
	for range senders {
		wg.Go(func() {
			for i := 0; i < ids; i += 20 {
				n, err := s.AppendFrom(t.Context(), SourceKafka, withIDs(i, 20), nil)
				if err != nil {
					t.Error(err)
					return
				}
				skipped.Add(int64(n))
			}
		})
	}
	wg.Wait()
	counts := countData(readAll(t, s.Spool, "a"))
	if len(counts) != ids {
		t.Fatalf("%d distinct events stored, want %d", len(counts), ids)
	}
	for data, n := range counts {
		if n != 1 {
			t.Fatalf("%s stored %d times", data, n)
		}
	}
	if got, want := skipped.Load(), int64((senders-1)*ids); got != want {
		t.Fatalf("skipped %d, want %d", got, want)
	}
	if got := testutil.ToFloat64(s.dedupe.deduplicated.WithLabelValues(SourceKafka)); got != float64((senders-1)*ids) {
		t.Fatalf("spillway_events_deduplicated_total{source=kafka} = %v", got)
	}
}

func TestADuplicateAfterTheWindowIsStoredAgain(t *testing.T) {
	for _, c := range []struct {
		scenario string
		inRun    bool // the first copy's key was moved from memory into a run
	}{
		{"key in memory", false},
		{"key in a run", true},
	} {
		t.Run(c.scenario, func(t *testing.T) {
			clock := newFakeClock()
			s := openDedupeTest(t, t.TempDir(), clock, 0)
			defer s.Close(context.Background())
			s.appendFrom(t, withIDs(0, 1))
			if c.inRun {
				rotate(t, s.Spool)
				s.settle(t)
				if s.dedupe.bytes == 0 {
					t.Fatal("no run written at rotation")
				}
			}
			clock.advance(DefaultDedupeWindow - time.Second)
			if got := s.appendFrom(t, withIDs(0, 1)); got != 1 {
				t.Fatalf("within the window: skipped %d, want 1", got)
			}
			clock.advance(2 * time.Second)
			if got := s.appendFrom(t, withIDs(0, 1)); got != 0 {
				t.Fatalf("after the window: skipped %d, want 0", got)
			}
			if got := len(readAll(t, s.Spool, "a")); got != 2 {
				t.Fatalf("read %d, want 2", got)
			}
			if got := s.windowHeld(t); got != DefaultDedupeWindow {
				t.Fatalf("window held %v, want %v: nothing was forgotten for room", got, DefaultDedupeWindow)
			}
		})
	}
}

func TestByteBoundHoldsUnderUniqueIDsAndTheWindowFalls(t *testing.T) {
	clock := newFakeClock()
	dir := t.TempDir()
	const maxBytes = MinDedupeMaxBytes
	s := openDedupeTest(t, dir, clock, maxBytes)
	defer s.Close(context.Background())
	s.setOpenMax(300)
	const batches, perBatch = 100, 100
	var prevHeld time.Duration = DefaultDedupeWindow
	for i := range batches {
		clock.advance(time.Minute)
		s.appendFrom(t, withIDs(i*perBatch, perBatch))
		if got := dirBytes(t, dedupeDir(dir)); got > maxBytes {
			t.Fatalf("batch %d: index is %d bytes on disk, over %d", i, got, maxBytes)
		}
		held := s.windowHeld(t)
		if held > prevHeld+time.Minute {
			t.Fatalf("batch %d: window held rose from %v to %v", i, prevHeld, held)
		}
		prevHeld = held
	}
	// 10000 keys of 12 bytes are twice the bound: the oldest went.
	s.settle(t)
	held := s.windowHeld(t)
	if held >= DefaultDedupeWindow || held <= 0 {
		t.Fatalf("window held %v after evicting for room, want between 0 and a day", held)
	}
	if got := s.appendFrom(t, withIDs(0, 1)); got != 0 {
		t.Fatal("the oldest id is still remembered beyond the byte bound")
	}
	last := (batches - 1) * perBatch
	if got := s.appendFrom(t, withIDs(last, perBatch)); got != perBatch {
		t.Fatalf("the newest batch skipped %d, want %d", got, perBatch)
	}
	// What the gauge claims is true: ids stored within it are remembered.
	oldest := batches - int(held/time.Minute) + 1
	if got := s.appendFrom(t, withIDs(oldest*perBatch, perBatch)); got != perBatch {
		t.Fatalf("ids stored %v ago, within the window held (%v), skipped %d, want %d", time.Duration(batches-oldest)*time.Minute, held, got, perBatch)
	}
}

func dirBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var n int64
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		fi, err := e.Info()
		if err != nil {
			continue // removed meanwhile
		}
		n += fi.Size()
	}
	return n
}

func TestDedupeOffStoresEveryCopyAndLeavesTheIndexForLater(t *testing.T) {
	dir := t.TempDir()
	s := openDedupeTest(t, dir, nil, 0)
	s.appendFrom(t, withIDs(0, 5))
	if err := s.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	// As the dlq commands open a stopped spool: without the server's flags.
	off, err := Open(Config{Dir: dir, Consumers: []string{"a"}}, nil, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	if n, err := off.AppendFrom(t.Context(), SourceHTTP, withIDs(0, 5), nil); err != nil || n != 0 {
		t.Fatalf("with the window 0: skipped %d, %v", n, err)
	}
	if err := off.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	s = openDedupeTest(t, dir, nil, 0)
	defer s.Close(context.Background())
	if got := s.appendFrom(t, withIDs(0, 5)); got != 5 {
		t.Fatalf("turned on again: skipped %d, want 5", got)
	}
	if got := len(readAll(t, s.Spool, "a")); got != 10 {
		t.Fatalf("read %d, want 10", got)
	}
}

func TestARunDamagedOnDiskIsDroppedAndTheWindowSaysSo(t *testing.T) {
	dir := t.TempDir()
	clock := newFakeClock()
	s := openDedupeTest(t, dir, clock, 0)
	s.appendFrom(t, withIDs(0, 5))
	if err := s.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	runs, _ := filepath.Glob(filepath.Join(dedupeDir(dir), "run-*"))
	if len(runs) != 1 {
		t.Fatalf("runs after close: %v", runs)
	}
	data, err := os.ReadFile(runs[0])
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)-1] ^= 0xff
	if err := os.WriteFile(runs[0], data, 0o600); err != nil {
		t.Fatal(err)
	}
	s = openDedupeTest(t, dir, clock, 0)
	defer s.Close(context.Background())
	// Its keys are read back from the generation's log, still there.
	if got := s.appendFrom(t, withIDs(0, 5)); got != 5 {
		t.Fatalf("skipped %d, want 5", got)
	}
	if got := s.windowHeld(t); got >= DefaultDedupeWindow {
		t.Fatalf("window held %v after losing a run", got)
	}
}

func TestBlockedBloomHasNoFalseNegatives(t *testing.T) {
	b := newBlockedBloom(10000)
	defer b.free()
	for i := range uint64(10000) {
		b.add(dedupeKey("wk", fmt.Append(nil, i)))
	}
	falsePos := 0
	for i := range uint64(10000) {
		if !b.has(dedupeKey("wk", fmt.Append(nil, i))) {
			t.Fatalf("key %d added and not found", i)
		}
		if b.has(dedupeKey("other", fmt.Append(nil, i))) {
			falsePos++
		}
	}
	// Sized for about 3%; a broken filter says yes far more often.
	if falsePos > 400 {
		t.Fatalf("%d false positives in 10000", falsePos)
	}
}

// BenchmarkAppendFrom is W1's load on the spool alone, 100 events a call
// with unique messageIds, with de-duplication off and on: the index's
// cost per event.
func BenchmarkAppendFrom(b *testing.B) {
	for _, window := range []time.Duration{0, DefaultDedupeWindow} {
		b.Run("dedupe="+window.String(), func(b *testing.B) {
			s, err := Open(Config{Dir: b.TempDir(), Consumers: []string{"a"}, DedupeWindow: window}, nil, nil)
			if err != nil {
				b.Fatal(err)
			}
			base := benchEvents(100)
			var next atomic.Int64
			b.ReportAllocs()
			b.SetParallelism(16)
			b.RunParallel(func(pb *testing.PB) {
				evs := slices.Clone(base)
				for pb.Next() {
					n := next.Add(1)
					for i := range evs {
						evs[i].MessageID = fmt.Appendf(evs[i].MessageID[:0], "bench-%d-%d", n, i)
					}
					if _, err := s.AppendFrom(context.Background(), SourceHTTP, evs, nil); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.StopTimer()
			s.Close(context.Background())
		})
	}
}

// A log entry whose value a crash took (a power cut under --sync=interval
// loses the value-log bytes past the last sync, not the key that points
// to them) is forgotten: the spool opens, and the rest of the index holds.
func TestADamagedDedupeLogEntryDoesNotStopTheStart(t *testing.T) {
	dir := t.TempDir()
	s := openDedupeTest(t, dir, nil, 0)
	s.appendFrom(t, withIDs(0, 20))
	newest := s.gens[len(s.gens)-1].dir
	if err := s.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	db, err := badger.Open(badger.DefaultOptions(newest).WithLogger(nil))
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(txn *badger.Txn) error { return txn.Set(dedupeLogKey(1<<62), []byte{0, 0}) })
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}

	s = openDedupeTest(t, dir, nil, 0)
	defer s.Close(context.Background())
	if got := s.appendFrom(t, withIDs(0, 20)); got != 20 {
		t.Fatalf("after the damaged entry the same batch skipped %d of 20", got)
	}
}

// A merged run holds every key of both runs once, in order, at the later
// of its two seconds, and none before the cutoff.
func TestMergedRunKeepsTheNewerOfEachKeyInOrder(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for round := range 50 {
		want := map[uint64]uint32{}
		gen := func(n int) []dedupeEntry {
			seen := map[uint64]bool{}
			var es []dedupeEntry
			for range n {
				k := uint64(rng.IntN(400))
				if seen[k] {
					continue
				}
				seen[k] = true
				es = append(es, dedupeEntry{k, uint32(rng.IntN(100))})
			}
			slices.SortFunc(es, func(a, b dedupeEntry) int { return cmpUint64(a.key, b.key) })
			return es
		}
		old, entries := gen(rng.IntN(300)), gen(rng.IntN(300))
		cutoff := uint32(rng.IntN(60))
		for _, e := range append(slices.Clone(old), entries...) {
			if e.at >= cutoff {
				want[e.key] = max(want[e.key], e.at)
			}
		}
		got := appendMerged(nil, appendMerged(nil, nil, old, 0), entries, cutoff)
		if len(got) != len(want)*dedupeEntryBytes {
			t.Fatalf("round %d: %d bytes merged, want %d entries", round, len(got), len(want))
		}
		prev := int64(-1)
		for ; len(got) > 0; got = got[dedupeEntryBytes:] {
			k, at := binary.BigEndian.Uint64(got), binary.BigEndian.Uint32(got[8:])
			if int64(k) <= prev {
				t.Fatalf("round %d: key %d after %d", round, k, prev)
			}
			prev = int64(k)
			if w, ok := want[k]; !ok || w != at {
				t.Fatalf("round %d: key %d at %d, want %d (present %v)", round, k, at, w, ok)
			}
		}
	}
}
