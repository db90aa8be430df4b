package spool

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/spillwayhq/spillway/internal/testkit"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	if dir := os.Getenv(crashChildEnv); dir != "" {
		os.Exit(runCrashChild(dir))
	}
	goleak.VerifyTestMain(m,
		// Badger's and ristretto's process-wide helpers outlive any one DB.
		goleak.IgnoreAnyFunction("github.com/golang/glog.(*fileSink).flushDaemon"),
		goleak.IgnoreTopFunction("github.com/dgraph-io/ristretto/v2.(*defaultPolicy[...]).processItems"),
		goleak.IgnoreTopFunction("github.com/dgraph-io/ristretto/v2.(*Cache[...]).processItems"),
		// A failed badger.Open leaves these two running (its cleanup does
		// not stop them): the tests of damaged spools fail opens on purpose.
		goleak.IgnoreTopFunction("github.com/dgraph-io/badger/v4.(*DB).monitorCache"),
		goleak.IgnoreTopFunction("github.com/dgraph-io/ristretto/v2/z.(*AllocatorPool).freeupAllocators"),
	)
}

func openTest(t testing.TB, dir string, consumers ...string) *Spool {
	t.Helper()
	s, err := Open(Config{Dir: dir, Consumers: consumers}, nil, prometheus.NewRegistry())
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	return s
}

func events(from, n int) []Event {
	out := make([]Event, n)
	for i := range out {
		out[i] = Event{WriteKey: "wk", Data: []byte(fmt.Sprintf(`{"n":%d}`, from+i))}
	}
	return out
}

func readAll(t *testing.T, s *Spool, consumer string) []Record {
	t.Helper()
	all, err := readToEnd(s, consumer)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return all
}

// readToEnd reads consumer's records until none is left, in small reads
// so that they cross block boundaries.
func readToEnd(s *Spool, consumer string) ([]Record, error) {
	var all []Record
	for {
		recs, err := s.Read(consumer, 7, 1<<20)
		if err != nil || len(recs) == 0 {
			return all, err
		}
		all = append(all, recs...)
	}
}

func TestAppendThenReadReturnsEveryEventInOrderToEachConsumer(t *testing.T) {
	s := openTest(t, t.TempDir(), "a", "b")
	defer s.Close(context.Background())
	for i := 0; i < 5; i++ {
		if err := s.Append(t.Context(), events(i*10, 10), nil); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []string{"a", "b"} {
		got := readAll(t, s, c)
		if len(got) != 50 {
			t.Fatalf("%s read %d events, want 50", c, len(got))
		}
		for i, r := range got {
			if want := fmt.Sprintf(`{"n":%d}`, i); string(r.Data) != want || r.Seq != uint64(i) || r.WriteKey != "wk" {
				t.Fatalf("%s record %d = %d %q %q, want seq %d %s", c, i, r.Seq, r.WriteKey, r.Data, i, want)
			}
		}
	}
}

func TestRestartResumesEachConsumerFromItsCursor(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, dir, "fast", "slow")
	if err := s.Append(t.Context(), events(0, 30), nil); err != nil {
		t.Fatal(err)
	}
	readAll(t, s, "fast")
	if err := s.Ack("fast", 30); err != nil {
		t.Fatal(err)
	}
	recs, _ := s.Read("slow", 10, 1<<20)
	if err := s.Ack("slow", recs[len(recs)-1].Seq+1); err != nil {
		t.Fatal(err)
	}
	readAll(t, s, "slow") // read but never acknowledged: must come again
	if err := s.Close(t.Context()); err != nil {
		t.Fatal(err)
	}

	s = openTest(t, dir, "fast", "slow")
	defer s.Close(context.Background())
	if got := readAll(t, s, "fast"); len(got) != 0 {
		t.Fatalf("fast got %d events after restart, want 0", len(got))
	}
	got := readAll(t, s, "slow")
	if len(got) != 20 || got[0].Seq != 10 {
		t.Fatalf("slow got %d events from seq %d, want 20 from 10", len(got), got[0].Seq)
	}
	if err := s.Append(t.Context(), events(30, 1), nil); err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, s, "fast"); len(got) != 1 || got[0].Seq != 30 {
		t.Fatalf("new event after restart: %+v, want seq 30", got)
	}
}

func TestConcurrentAppendsShareCommits(t *testing.T) {
	s := openTest(t, t.TempDir(), "a")
	defer s.Close(context.Background())
	const writers, each = 32, 20
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				if err := s.Append(context.Background(), events(0, 3), nil); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if got := len(readAll(t, s, "a")); got != writers*each*3 {
		t.Fatalf("read %d events, want %d", got, writers*each*3)
	}
	if blocks := testutil.ToFloat64(s.metrics.blocks); blocks >= writers*each {
		t.Fatalf("%v blocks for %d appends: group commit is not sharing fsyncs", blocks, writers*each)
	}
}

func TestReplayedEventGoesOnlyToItsDestination(t *testing.T) {
	s := openTest(t, t.TempDir(), "a", "b")
	defer s.Close(context.Background())
	dl := DeadLetter{Destination: "b", Reason: ReasonRejected, Status: 400, Error: "bad", WriteKey: "wk2", Event: []byte(`{"x":1}`)}
	if err := s.DeadLetter(t.Context(), []DeadLetter{dl}); err != nil {
		t.Fatal(err)
	}
	var listed []DeadLetter
	if err := s.DeadLetters(Filter{Destination: "b"}, func(d DeadLetter) error { listed = append(listed, d); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(listed) != 1 || listed[0].Status != 400 || string(listed[0].Event) != `{"x":1}` || listed[0].At.IsZero() {
		t.Fatalf("listed %+v", listed)
	}
	n, err := s.Replay(t.Context(), Filter{Destination: "b"})
	if err != nil || n != 1 {
		t.Fatalf("replay = %d, %v", n, err)
	}
	if got := readAll(t, s, "a"); len(got) != 0 {
		t.Fatalf("a got %d replayed events meant for b", len(got))
	}
	got := readAll(t, s, "b")
	if len(got) != 1 || string(got[0].Data) != `{"x":1}` || got[0].WriteKey != "wk2" {
		t.Fatalf("b got %+v", got)
	}
	if n, _ := s.Purge(Filter{}); n != 0 {
		t.Fatalf("store still held %d after replay", n)
	}
}

// TestReplayKeepsDeadLettersOfDestinationsNotConfigured: replayed, they
// would reach no consumer and be reclaimed with their generation. A spool
// opened without consumers (spillway dlq --spool-dir) replays them all.
func TestReplayKeepsDeadLettersOfDestinationsNotConfigured(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, dir, "a")
	dead := []DeadLetter{
		{Destination: "a", Reason: ReasonRejected, Status: 400, Event: []byte(`{"to":"a"}`)},
		{Destination: "gone", Reason: ReasonRejected, Status: 400, Event: []byte(`{"to":"gone"}`)},
		{Reason: ReasonInvalid, Error: "track requires event", Event: []byte(`{"to":"all"}`)},
	}
	if err := s.DeadLetter(t.Context(), dead); err != nil {
		t.Fatal(err)
	}
	if n, err := s.Replay(t.Context(), Filter{Destination: "gone"}); !errors.Is(err, ErrUnknownConsumer) || n != 0 {
		t.Fatalf("replay for a destination not configured = %d, %v; want ErrUnknownConsumer", n, err)
	}
	if n, err := s.Replay(t.Context(), Filter{}); err != nil || n != 2 {
		t.Fatalf("replay all = %d, %v; want the 2 with a consumer", n, err)
	}
	if got := readAll(t, s, "a"); len(got) != 2 {
		t.Fatalf("a got %d replayed events, want its own and the ingest reject", len(got))
	}
	var left []DeadLetter
	_ = s.DeadLetters(Filter{}, func(d DeadLetter) error { left = append(left, d); return nil })
	if len(left) != 1 || left[0].Destination != "gone" {
		t.Fatalf("left in the store: %+v, want only gone's", left)
	}
	if err := s.Close(t.Context()); err != nil {
		t.Fatal(err)
	}

	s, err := Open(Config{Dir: dir}, nil, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())
	if n, err := s.Replay(t.Context(), Filter{Destination: "gone"}); err != nil || n != 1 {
		t.Fatalf("replay on a spool opened without consumers = %d, %v; want 1", n, err)
	}
}

// TestReplayAndPurgeGoAChunkAtATime: taken whole, a replay of a large
// store held every dead letter in memory and made one commit of them all,
// which every acknowledgement behind it waited for. Each chunk is its own
// commit; a limit holds across chunks.
func TestReplayAndPurgeGoAChunkAtATime(t *testing.T) {
	s := openTest(t, t.TempDir(), "a")
	defer s.Close(context.Background())
	const n, size = 600, 10 << 10 // 6 MiB: two dozen chunks
	var dead []DeadLetter
	for i := range n {
		dead = append(dead, DeadLetter{Destination: "a", Reason: ReasonRejected, Status: 400,
			Event: fmt.Appendf(nil, `{"n":%d,"pad":"%s"}`, i, strings.Repeat("x", size))})
	}
	for chunk := range slices.Chunk(dead, 50) {
		if err := s.DeadLetter(t.Context(), chunk); err != nil {
			t.Fatal(err)
		}
	}
	commits := func() uint64 {
		var m dto.Metric
		if err := s.metrics.fsync.Write(&m); err != nil {
			t.Fatal(err)
		}
		return m.GetHistogram().GetSampleCount()
	}
	before := commits()
	if got, err := s.Replay(t.Context(), Filter{Limit: 450}); err != nil || got != 450 {
		t.Fatalf("replay of 450 = %d, %v", got, err)
	}
	if c := commits() - before; c < 4 {
		t.Errorf("450 dead letters of 10 KiB replayed in %d commits, want a chunk (256 KiB) a commit", c)
	}
	got := readAll(t, s, "a")
	if len(got) != 450 {
		t.Fatalf("a got %d replayed events, want 450", len(got))
	}
	for i, r := range got {
		if want := fmt.Sprintf(`{"n":%d,`, i); !bytes.HasPrefix(r.Data, []byte(want)) {
			t.Fatalf("replayed event %d is %.20s, want the oldest first", i, r.Data)
		}
	}
	if purged, err := s.Purge(Filter{}); err != nil || purged != n-450 {
		t.Fatalf("purge = %d, %v; want the %d left", purged, err, n-450)
	}
	if err := s.DeadLetters(Filter{}, func(d DeadLetter) error { return fmt.Errorf("left in the store: %d", d.ID) }); err != nil {
		t.Fatal(err)
	}
}

// Badger caps a transaction at a fraction of its memtable; a request
// full of large rejected events is far above it.
func TestManyLargeDeadLettersAreAllStoredAndSurviveRestart(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, dir, "a")
	big := []byte(`"` + strings.Repeat("x", 30<<10) + `"`)
	var dead []DeadLetter
	for i := range 200 { // 6 MiB
		dead = append(dead, DeadLetter{Reason: ReasonInvalid, Error: fmt.Sprint(i), Event: big})
	}
	if err := s.Append(t.Context(), events(0, 1), dead); err != nil {
		t.Fatalf("append: %v", err)
	}
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	s = openTest(t, dir, "a")
	defer s.Close(context.Background())
	seen := map[string]bool{}
	err := s.DeadLetters(Filter{}, func(d DeadLetter) error {
		if len(d.Event) != len(big) {
			return fmt.Errorf("dead letter %s holds %d bytes", d.Error, len(d.Event))
		}
		seen[d.Error] = true
		return nil
	})
	if err != nil || len(seen) != len(dead) {
		t.Fatalf("stored %d of %d dead letters: %v", len(seen), len(dead), err)
	}
}

func TestPurgeRemovesOnlySelectedDeadLetters(t *testing.T) {
	s := openTest(t, t.TempDir(), "a")
	defer s.Close(context.Background())
	err := s.Append(t.Context(), nil, []DeadLetter{
		{Reason: ReasonInvalid, Event: []byte(`1`)},
		{Destination: "a", Reason: ReasonExpired, Event: []byte(`2`)},
	})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := s.Purge(Filter{Reason: ReasonInvalid}); n != 1 || err != nil {
		t.Fatalf("purge = %d, %v", n, err)
	}
	var left []string
	_ = s.DeadLetters(Filter{}, func(d DeadLetter) error { left = append(left, d.Reason); return nil })
	if len(left) != 1 || left[0] != ReasonExpired {
		t.Fatalf("left %v", left)
	}
}

func TestCorruptBlockIsQuarantinedAndReadingGoesOn(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, dir, "a")
	for i := 0; i < 3; i++ {
		if err := s.Append(t.Context(), events(i*5, 5), nil); err != nil {
			t.Fatal(err)
		}
	}
	s.Close(t.Context())

	// Damage the middle block through a raw Badger transaction.
	gens, err := listGenerations(dir)
	if err != nil || len(gens) == 0 {
		t.Fatalf("generations: %v %v", gens, err)
	}
	db, err := badger.Open(badger.DefaultOptions(gens[0].dir).WithLogger(nil))
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{prefixBlock}})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			if m, _ := parseBlockKey(it.Item().Key()); m.first == 5 {
				return txn.Set(it.Item().KeyCopy(nil), []byte{blockVersion, flagZstd, 0, 0, 0, 0, 1, 2, 3})
			}
		}
		return fmt.Errorf("no block at seq 5")
	})
	if err != nil {
		t.Fatal(err)
	}
	db.Close()

	s = openTest(t, dir, "a")
	defer s.Close(context.Background())
	got := readAll(t, s, "a")
	if len(got) != 10 || got[4].Seq != 4 || got[5].Seq != 10 {
		t.Fatalf("read %d events (%v); want the 10 of the intact blocks", len(got), seqs(got))
	}
	var dls []DeadLetter
	_ = s.DeadLetters(Filter{Reason: ReasonCorrupt}, func(d DeadLetter) error { dls = append(dls, d); return nil })
	if len(dls) != 1 || testutil.ToFloat64(s.metrics.corrupt) != 1 {
		t.Fatalf("quarantined %d blocks (counter %v), want 1", len(dls), testutil.ToFloat64(s.metrics.corrupt))
	}
}

func seqs(rs []Record) []uint64 {
	out := make([]uint64, len(rs))
	for i, r := range rs {
		out[i] = r.Seq
	}
	return out
}

func TestDeliveredGenerationsAreRemovedAndNumberingSurvives(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, dir, "a")
	if err := s.Append(t.Context(), events(0, 10), nil); err != nil {
		t.Fatal(err)
	}
	rotate(t, s)
	// Once the next spare is made too: until then its directory would
	// count as written.
	testkit.Eventually(t, func() bool { s.genMu.Lock(); defer s.genMu.Unlock(); return s.spare != nil }, "no spare generation opened")
	s.reclaim()
	if gens := writtenGenerations(t, s, dir); len(gens) != 2 {
		t.Fatalf("%d generations before delivery, want the old and the new", len(gens))
	}
	readAll(t, s, "a")
	if err := s.Ack("a", 10); err != nil {
		t.Fatal(err)
	}
	s.reclaim()
	if gens := writtenGenerations(t, s, dir); len(gens) != 1 || gens[0] != s.active.dir {
		t.Fatalf("generations after every consumer passed the first: %v, want only %s", gens, s.active.dir)
	}
	s.Close(t.Context())
	s = openTest(t, dir, "a")
	defer s.Close(context.Background())
	if err := s.Append(t.Context(), events(10, 1), nil); err != nil {
		t.Fatal(err)
	}
	got := readAll(t, s, "a")
	if len(got) != 1 || got[0].Seq != 10 {
		t.Fatalf("after removing everything delivered, new event has seq %v, want 10", seqs(got))
	}
}

// writtenGenerations lists the generation directories on disk, less the
// spare opened ahead of need.
func writtenGenerations(t *testing.T, s *Spool, dir string) []string {
	t.Helper()
	gens, err := listGenerations(dir)
	if err != nil {
		t.Fatal(err)
	}
	s.genMu.Lock()
	defer s.genMu.Unlock()
	var out []string
	for _, g := range gens {
		if s.spare == nil || g.dir != s.spare.dir {
			out = append(out, g.dir)
		}
	}
	return out
}

// rotate has the writer move to a new generation and waits until it has;
// it returns the generation it left.
func rotate(t *testing.T, s *Spool) *generation {
	t.Helper()
	s.genMu.Lock()
	left := s.active
	s.genMu.Unlock()
	s.rotate <- struct{}{}
	testkit.Eventually(t, func() bool { s.genMu.Lock(); defer s.genMu.Unlock(); return s.active != left }, "the writer did not move to a new generation")
	return left
}

func TestFullSpoolRefusesAppend(t *testing.T) {
	s, err := Open(Config{Dir: t.TempDir(), MaxBytes: 1, Consumers: []string{"a"}}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())
	if err := s.Append(t.Context(), events(0, 1), nil); err != ErrFull {
		t.Fatalf("append to a full spool = %v, want ErrFull", err)
	}
	if s.Ready() != ErrFull {
		t.Fatal("full spool reports ready")
	}
}

// TestASpoolFullOfDeadLettersSaysSo: dead letters stay until an operator
// replays or purges them, so a store that fills the spool keeps refusing
// events while every destination is up and caught up. The log line that
// says the spool is full points at them.
func TestASpoolFullOfDeadLettersSaysSo(t *testing.T) {
	var logs testkit.Buffer
	s, err := Open(Config{Dir: t.TempDir(), MaxBytes: 4 << 20, Consumers: []string{"a"}},
		slog.New(slog.NewTextHandler(&logs, nil)), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())
	// Random, so that compression leaves about 6 MB of them.
	rnd := rand.New(rand.NewPCG(1, 2))
	noise := make([]byte, 8<<10)
	for i := range 800 {
		for j := range noise {
			noise[j] = byte(rnd.Uint32())
		}
		pad := base64.StdEncoding.EncodeToString(noise)
		dl := DeadLetter{Destination: "a", Reason: ReasonRejected, Status: 400, Event: fmt.Appendf(nil, `{"n":%d,"pad":%q}`, i, pad)}
		if err := s.DeadLetter(t.Context(), []DeadLetter{dl}); err != nil {
			t.Fatal(err)
		}
	}
	testkit.Eventually(t, func() bool { return strings.Contains(logs.String(), "spool full") }, "no \"spool full\" log line")
	if s.Ready() != ErrFull {
		t.Fatalf("ready = %v with 6 MB of dead letters in a 4 MiB spool, want ErrFull", s.Ready())
	}
	if out := logs.String(); !strings.Contains(out, "dead_letter_bytes=") || !strings.Contains(out, "spillway dlq") {
		t.Errorf("the spool is full of dead letters, and its log does not say so:\n%s", out)
	}
}

func TestClosedSpoolRefusesAppendAndCloseIsIdempotent(t *testing.T) {
	s := openTest(t, t.TempDir(), "a")
	if err := s.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(t.Context()); err != nil {
		t.Fatalf("second close: %v", err)
	}
	if err := s.Append(t.Context(), events(0, 1), nil); err != ErrClosed {
		t.Fatalf("append after close = %v", err)
	}
}

func TestBacklogCountsUnacknowledgedEventsAndTheirAge(t *testing.T) {
	s := openTest(t, t.TempDir(), "a")
	defer s.Close(context.Background())
	before := time.Now().Add(-time.Millisecond)
	if err := s.Append(t.Context(), events(0, 4), nil); err != nil {
		t.Fatal(err)
	}
	b := s.Backlog("a")
	if b.Events != 4 || b.Oldest.Before(before.Truncate(time.Millisecond)) {
		t.Fatalf("backlog %+v", b)
	}
	_ = s.Ack("a", 4)
	if b := s.Backlog("a"); b.Events != 0 {
		t.Fatalf("backlog after ack %+v", b)
	}
}

func BenchmarkAppend(b *testing.B) {
	for _, size := range []int{1, 100} {
		for _, mode := range []SyncMode{SyncAlways, SyncInterval} {
			for _, writers := range []int{1, 16} {
				name := "events=" + strconv.Itoa(size) + "/fsync=" + mode.String() + "/writers=" + strconv.Itoa(writers)
				b.Run(name, func(b *testing.B) {
					s, err := Open(Config{Dir: b.TempDir(), Sync: mode, Consumers: []string{"a"}}, nil, nil)
					if err != nil {
						b.Fatal(err)
					}
					evs := make([]Event, size)
					data := make([]byte, 750)
					for i := range data {
						data[i] = byte('a' + i%26)
					}
					for i := range evs {
						evs[i] = Event{WriteKey: "wk", Data: data}
					}
					b.ReportAllocs()
					b.SetBytes(int64(size * len(data)))
					b.SetParallelism(writers)
					b.RunParallel(func(pb *testing.PB) {
						for pb.Next() {
							if err := s.Append(context.Background(), evs, nil); err != nil {
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
	}
}

// benchEvents are n track events with random ids, prices, times and
// agents, so that compression has real work; they compress a little better
// than scripts/bench's events (0.15 of raw against 0.17 in 1 MiB blocks).
func benchEvents(n int) []Event {
	rng := rand.New(rand.NewPCG(1, 2))
	agents := []string{
		"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
		"Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
		"Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0",
	}
	events := make([]Event, n)
	for i := range events {
		events[i] = Event{WriteKey: "wk", Data: fmt.Appendf(nil, `{"type":"track","event":"Order Completed","userId":"user-%d","anonymousId":"%08x-%04x-%04x-%04x-%012x","messageId":"%016x%016x","properties":{"orderId":"ord-%d","revenue":%d.%02d,"currency":"USD","products":[{"sku":"SKU-%06d","name":"item %d","price":%d.99,"quantity":%d,"category":"cat-%d"}]},"context":{"library":{"name":"analytics.js","version":"2.11.1"},"page":{"path":"/p/%d","url":"https://shop.example.com/p/%d?ref=%x"},"userAgent":"%s","ip":"203.0.%d.%d","locale":"en-US"},"timestamp":"2026-11-25T10:%02d:%02d.%03dZ"}`,
			rng.IntN(20000), rng.Uint32(), rng.Uint32()&0xffff, rng.Uint32()&0xffff, rng.Uint32()&0xffff, rng.Uint64()&(1<<48-1),
			rng.Uint64(), rng.Uint64(), rng.IntN(1e6), rng.IntN(500), rng.IntN(100), rng.IntN(4000), rng.IntN(4000), rng.IntN(200), 1+rng.IntN(3), rng.IntN(40),
			rng.IntN(4000), rng.IntN(4000), rng.Uint32(), agents[rng.IntN(len(agents))], rng.IntN(256), rng.IntN(256), rng.IntN(60), rng.IntN(60), rng.IntN(1000))}
	}
	return events
}

// Block sizes: one request's worth at moderate load, and a full-load
// block (about maxBlockBytes).
var benchBlockSizes = []int{100, 1500}

// BenchmarkSealBlock compresses a block body into its stored envelope: most
// of a group commit's CPU.
func BenchmarkSealBlock(b *testing.B) {
	for _, n := range benchBlockSizes {
		b.Run("events="+strconv.Itoa(n), func(b *testing.B) {
			events := benchEvents(n)
			body := encodeBody(nil, time.Now(), events)
			b.ReportAllocs()
			b.SetBytes(int64(sizeOfEvents(events)))
			var val []byte
			for b.Loop() {
				val = sealBlock(body)
			}
			b.ReportMetric(float64(len(val))/float64(sizeOfEvents(events)), "stored/raw")
		})
	}
}

// BenchmarkReadBlock decodes a stored block into reused buffers: what a
// destination that has fallen behind the in-memory blocks pays per block
// it reads back from disk.
func BenchmarkReadBlock(b *testing.B) {
	for _, n := range benchBlockSizes {
		b.Run("events="+strconv.Itoa(n), func(b *testing.B) {
			events := benchEvents(n)
			val := sealBlock(encodeBody(nil, time.Now(), events))
			b.ReportAllocs()
			b.SetBytes(int64(sizeOfEvents(events)))
			var blk decodedBlock
			var body []byte
			for b.Loop() {
				var err error
				if body, err = openBlockInto(body, val); err != nil {
					b.Fatal(err)
				}
				if err := blk.decode(0, body); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func TestMaskWriteKeyKeepsOnlyEnoughToTellKeysApart(t *testing.T) {
	for key, want := range map[string]string{
		"":                   "",
		"abc":                "…",
		"12345678":           "…",
		"wk_live_0123456789": "wk_l…",
	} {
		if got := MaskWriteKey(key); got != want {
			t.Errorf("MaskWriteKey(%q) = %q, want %q", key, got, want)
		}
	}
}

// TestReopenCountsWhatWillBeSentAgain: what a consumer had read past its
// cursor when the spool last saved is read again after a restart, and
// counted as sent again; after a clean stop with everything acknowledged,
// nothing is.
func TestReopenCountsWhatWillBeSentAgain(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, dir, "a")
	if err := s.Append(t.Context(), events(0, 100), nil); err != nil {
		t.Fatal(err)
	}
	recs, err := s.Read("a", 40, 1<<20)
	if err != nil || len(recs) != 40 {
		t.Fatalf("read %d, err %v", len(recs), err)
	}
	if err := s.Ack("a", recs[9].Seq+1); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(t.Context()); err != nil {
		t.Fatal(err)
	}

	reg := prometheus.NewRegistry()
	s, err = Open(Config{Dir: dir, Consumers: []string{"a"}}, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(s.metrics.resent.WithLabelValues("a")); got != 30 {
		t.Fatalf("counted %v events sent again, want the 30 read past the cursor", got)
	}
	again := readAll(t, s, "a")
	if len(again) != 90 || again[0].Seq != recs[10].Seq {
		t.Fatalf("after reopening read %d events from %v, want 90 from %d", len(again), again[0].Seq, recs[10].Seq)
	}
	if err := s.Ack("a", again[len(again)-1].Seq+1); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(t.Context()); err != nil {
		t.Fatal(err)
	}

	s, err = Open(Config{Dir: dir, Consumers: []string{"a"}}, nil, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())
	if got := testutil.ToFloat64(s.metrics.resent.WithLabelValues("a")); got != 0 {
		t.Fatalf("counted %v events sent again after everything was acknowledged", got)
	}
}

// TestGenerationsNumberedOutOfOrderAreReadAndReclaimedInOrder: the writer
// makes its own next generation when the spare is not ready, and the spare,
// numbered before it, goes into use after it, so a higher number may hold
// older events. After a restart, reclaiming what one destination had
// delivered removed a generation of events it had not.
func TestGenerationsNumberedOutOfOrderAreReadAndReclaimedInOrder(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, dir, "a")
	for i := range 3 {
		if err := s.Append(t.Context(), events(i*10, 10), nil); err != nil {
			t.Fatal(err)
		}
		rotate(t, s)
	}
	byFirst := map[uint64]string{}
	for _, g := range s.gens {
		if g.blocks > 0 || g.first < 30 {
			byFirst[g.first] = g.dir
		}
	}
	if err := s.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	// Whatever numbers they got, give the events 20-29 the lower one.
	a, b := byFirst[10], byFirst[20]
	if a == "" || b == "" {
		t.Fatalf("generations by first event: %v", byFirst)
	}
	if a < b {
		for _, step := range [][2]string{{a, a + ".swap"}, {b, a}, {a + ".swap", b}} {
			if err := os.Rename(step[0], step[1]); err != nil {
				t.Fatal(err)
			}
		}
	}

	s = openTest(t, dir, "a")
	recs, err := s.Read("a", 15, 1<<20)
	if err != nil || len(recs) != 15 || recs[14].Seq != 14 {
		t.Fatalf("read %d records (%v), want 0-14", len(recs), err)
	}
	if err := s.Ack("a", 15); err != nil {
		t.Fatal(err)
	}
	s.reclaim()
	if err := s.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	s = openTest(t, dir, "a")
	defer s.Close(context.Background())
	got := readAll(t, s, "a")
	if len(got) != 15 || got[0].Seq != 15 || got[14].Seq != 29 {
		t.Fatalf("after reclaiming what was delivered, read %d events %v; want 15-29", len(got), seqs(got))
	}
}

// TestOpenWithoutConsumersReclaimsNothing: spillway dlq --spool-dir opens
// the spool without knowing its destinations; however long it stays open
// (a listing piped into a pager), no undelivered event may be reclaimed.
func TestOpenWithoutConsumersReclaimsNothing(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, dir, "a")
	if err := s.Append(t.Context(), events(0, 100), nil); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	s, err := Open(Config{Dir: dir}, nil, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	s.reclaim() // what the maintenance loop does every second
	if err := s.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	s = openTest(t, dir, "a")
	defer s.Close(context.Background())
	if got := len(readAll(t, s, "a")); got != 100 {
		t.Fatalf("read %d of 100 undelivered events after a spool was opened without consumers", got)
	}
}
