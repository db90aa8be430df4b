package spool

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"syscall"
	"testing"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/spillwayhq/spillway/internal/procstat"
)

// deadLettersOf makes n dead letters of about size bytes of random text
// each, so that compression leaves them about as large.
func deadLettersOf(rnd *rand.Rand, reason string, n, size int) []DeadLetter {
	dead := make([]DeadLetter, n)
	const letters = "abcdefghijklmnopqrstuvwxyz0123456789"
	pad := make([]byte, size)
	for i := range dead {
		for j := range pad {
			pad[j] = letters[rnd.IntN(len(letters))]
		}
		dead[i] = DeadLetter{Destination: "a", Reason: reason, Event: fmt.Appendf(nil, `{"pad":%q}`, pad)}
	}
	return dead
}

// listDead returns the ids of every stored dead letter, in order.
func listDead(t *testing.T, s *Spool) []uint64 {
	t.Helper()
	var ids []uint64
	if err := s.DeadLetters(Filter{}, func(d DeadLetter) error { ids = append(ids, d.ID); return nil }); err != nil {
		t.Fatal(err)
	}
	return ids
}

func openWithRegistry(t *testing.T, dir string) (*Spool, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	s, err := Open(Config{Dir: dir, Consumers: []string{"a"}}, nil, reg)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	return s, reg
}

func deadGauge(t *testing.T, s *Spool) int {
	t.Helper()
	return int(testutil.ToFloat64(s.metrics.deadLetters))
}

func TestDeadLetterCountStaysExactThroughPartialDeletesAndRestarts(t *testing.T) {
	dir := t.TempDir()
	s, _ := openWithRegistry(t, dir)
	rnd := rand.New(rand.NewPCG(3, 4))
	// Interleaved reasons, so that purging one reason deletes inside
	// every frame rather than whole ones; 3 MB spans several frames.
	var dead []DeadLetter
	for i := range 6000 {
		reason := ReasonRejected
		if i%3 == 0 {
			reason = ReasonExpired
		}
		dead = append(dead, deadLettersOf(rnd, reason, 1, 500)...)
	}
	if err := s.DeadLetter(t.Context(), dead[:3000]); err != nil {
		t.Fatal(err)
	}
	if err := s.DeadLetter(t.Context(), dead[3000:]); err != nil {
		t.Fatal(err)
	}
	if got := deadGauge(t, s); got != 6000 {
		t.Fatalf("gauge = %d after storing 6000", got)
	}
	n, err := s.Purge(Filter{Reason: ReasonExpired})
	if err != nil || n != 2000 {
		t.Fatalf("purge = %d, %v; want 2000", n, err)
	}
	ids := listDead(t, s)
	if len(ids) != 4000 || deadGauge(t, s) != 4000 {
		t.Fatalf("after the purge: %d listed, gauge %d; want 4000", len(ids), deadGauge(t, s))
	}
	for i, id := range ids {
		if id%3 == 0 || (i > 0 && id <= ids[i-1]) {
			t.Fatalf("listing after the purge: id %d at %d (ids must rise, and every third was purged)", id, i)
		}
	}
	// A walk that starts inside a block (as Replay's chunks do).
	var fromMiddle []uint64
	if _, err := s.walkDead(Filter{Limit: 5}, ids[1000], func(d DeadLetter) error { fromMiddle = append(fromMiddle, d.ID); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(fromMiddle) != 5 || fromMiddle[0] != ids[1000] || fromMiddle[4] != ids[1004] {
		t.Fatalf("walk from id %d gave %v, want %v", ids[1000], fromMiddle, ids[1000:1005])
	}
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}

	s, _ = openWithRegistry(t, dir)
	defer s.Close(context.Background())
	if got := deadGauge(t, s); got != 4000 {
		t.Fatalf("gauge after restart = %d, want 4000", got)
	}
	if err := s.DeadLetter(t.Context(), deadLettersOf(rnd, ReasonRejected, 1, 10)); err != nil {
		t.Fatal(err)
	}
	after := listDead(t, s)
	if last := after[len(after)-1]; len(after) != 4001 || last != 6000 {
		t.Fatalf("after restart a new dead letter got id %d (%d listed); numbering must go on from 6000", last, len(after))
	}
	if n, err := s.Purge(Filter{}); err != nil || n != 4001 {
		t.Fatalf("purge all = %d, %v", n, err)
	}
	if got := deadGauge(t, s); got != 0 || len(listDead(t, s)) != 0 {
		t.Fatalf("gauge %d after purging everything", got)
	}
}

// A spool written when each dead letter had its own key opens with every
// one of them, ids kept, counted, and numbering going on after them.
func TestLegacyDeadLettersAreMovedToTheStore(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, dir, "a")
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Write what the old format held, straight into meta, and remove the
	// count that marks the new one.
	db, err := badger.Open(badger.DefaultOptions(metaDir(dir)).WithLogger(nil))
	if err != nil {
		t.Fatal(err)
	}
	const legacy = 700
	err = db.Update(func(txn *badger.Txn) error {
		if err := txn.Delete(deadCountKey); err != nil {
			return err
		}
		for i := range legacy {
			id := uint64(10 + 2*i) // gaps, as purges leave
			v, _ := json.Marshal(DeadLetter{ID: id, Reason: ReasonInvalid, Error: fmt.Sprint(id), Event: []byte(`{"n":1}`)})
			k := append([]byte{prefixLegacyDead}, binary.BigEndian.AppendUint64(nil, id)...)
			if err := txn.Set(k, v); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	s, _ = openWithRegistry(t, dir)
	defer s.Close(context.Background())
	if got := deadGauge(t, s); got != legacy {
		t.Fatalf("gauge = %d, want %d", got, legacy)
	}
	var seen []DeadLetter
	_ = s.DeadLetters(Filter{}, func(d DeadLetter) error { seen = append(seen, d); return nil })
	if len(seen) != legacy {
		t.Fatalf("listed %d of %d legacy dead letters", len(seen), legacy)
	}
	for i, d := range seen {
		if want := uint64(10 + 2*i); d.ID != want || d.Error != fmt.Sprint(want) {
			t.Fatalf("dead letter %d: id %d error %q, want id %d", i, d.ID, d.Error, want)
		}
	}
	if err := s.DeadLetter(t.Context(), []DeadLetter{{Reason: ReasonRejected, Event: []byte(`{}`)}}); err != nil {
		t.Fatal(err)
	}
	ids := listDead(t, s)
	if last := ids[len(ids)-1]; last != 10+2*(legacy-1)+1 {
		t.Fatalf("new dead letter got id %d, want the one after the last legacy id", last)
	}
	err = s.meta.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{prefixLegacyDead}})
		defer it.Close()
		if it.Rewind(); it.Valid() {
			return fmt.Errorf("legacy key %x left behind", it.Item().Key())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// runDeadLetterCrashChild stores dead letters until it is killed, saying
// how many were acknowledged.
func runDeadLetterCrashChild(dir string) int {
	s, err := Open(Config{Dir: dir, Consumers: []string{"a"}}, nil, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, "child: open:", err)
		return 3
	}
	rnd := rand.New(rand.NewPCG(5, 6))
	for acked := 0; ; {
		dead := deadLettersOf(rnd, ReasonRejected, 400, 600)
		if err := s.DeadLetter(context.Background(), dead); err != nil {
			fmt.Fprintln(os.Stderr, "child: dead letter:", err)
			return 3
		}
		acked += len(dead)
		fmt.Printf("acked %d\n", acked)
	}
}

// kill -9 while dead letters are being stored, a group's worth at a time:
// every acknowledged one is there, and the count says how many are.
func TestKilledWhileStoringDeadLettersKeepsThemAndTheirCount(t *testing.T) {
	dir := t.TempDir()
	for round := range 3 {
		before := 0
		if round > 0 {
			s, _ := openWithRegistry(t, dir)
			before = len(listDead(t, s))
			if err := s.Close(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
		cmd, sc := startCrashChild(t, dir, crashModeDeadLetters)
		acked := 0
		for sc.Scan() {
			v, _ := strings.CutPrefix(sc.Text(), "acked ")
			fmt.Sscan(v, &acked)
			if acked >= 2000*(round+1) {
				break
			}
		}
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()
		if acked == 0 {
			t.Fatal("the child acknowledged nothing")
		}

		s, _ := openWithRegistry(t, dir)
		listed := len(listDead(t, s))
		gauge := deadGauge(t, s)
		_ = s.Close(context.Background())
		if listed < before+acked {
			t.Fatalf("round %d: %d dead letters listed, %d were there and %d more acknowledged", round, listed, before, acked)
		}
		if gauge != listed {
			t.Fatalf("round %d: the count says %d, %d are listed", round, gauge, listed)
		}
	}
}

// rssFile is the process's resident file-backed memory.
func rssFile(t *testing.T) int {
	t.Helper()
	kib, err := procstat.StatusKiB(os.Getpid(), "RssFile")
	if err != nil {
		t.Skip("no RssFile in /proc/self/status:", err)
	}
	return int(kib) << 10
}

// Reading the whole dead-letter store (a listing, a replay) leaves none of
// its table pages resident.
func TestListingDeadLettersLeavesTheirPagesOutOfMemory(t *testing.T) {
	dir := t.TempDir()
	storeDeadLetters(t, openTest(t, dir, "a"), rand.New(rand.NewPCG(9, 10)), 12, 400, 4000)
	s := openTest(t, dir, "a")
	defer s.Close(context.Background())
	store := DiskUsage(deadDir(dir))
	before := rssFile(t)
	n := 0
	if err := s.DeadLetters(Filter{}, func(DeadLetter) error { n++; return nil }); err != nil || n != 4800 {
		t.Fatalf("listed %d of 4800: %v", n, err)
	}
	grew := rssFile(t) - before
	t.Logf("store %d bytes; resident file pages grew by %d bytes across the listing", store, grew)
	if grew > int(store)/4 {
		t.Fatalf("listing a %d-byte store left %d bytes of it resident", store, grew)
	}
}
