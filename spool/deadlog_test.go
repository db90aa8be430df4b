package spool

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/spillwayhq/spillway/internal/testkit"
)

// deadFiles returns the names of the dead-letter store's files.
func deadFiles(t *testing.T, dir string) []string {
	t.Helper()
	return testkit.DirNames(t, deadDir(dir))
}

// storeDeadLetters stores rounds calls' worth of n random dead letters of
// about size bytes each, one group each, and closes s.
func storeDeadLetters(t *testing.T, s *Spool, rnd *rand.Rand, rounds, n, size int) {
	t.Helper()
	for range rounds {
		if err := s.DeadLetter(t.Context(), deadLettersOf(rnd, ReasonRejected, n, size)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func withSuffix(names []string, suffix string) []string {
	var out []string
	for _, n := range names {
		if strings.HasSuffix(n, suffix) {
			out = append(out, n)
		}
	}
	return out
}

// A crash while a frame was being appended leaves part of it at the end of
// the newest segment: it was never acknowledged, and everything before it
// opens, is counted and is listed; the store takes new letters after it.
func TestATornDeadLetterFrameIsCutOffAndEverythingBeforeItKept(t *testing.T) {
	dir := t.TempDir()
	s, _ := openWithRegistry(t, dir)
	rnd := rand.New(rand.NewPCG(1, 7))
	storeDeadLetters(t, s, rnd, 3, 50, 300)
	segs := withSuffix(deadFiles(t, dir), segmentSuffix)
	if len(segs) != 1 {
		t.Fatalf("segments %v, want one", segs)
	}
	path := filepath.Join(deadDir(dir), segs[0])
	whole, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// The first 200 bytes of a frame: a header that promises more.
	if err := os.WriteFile(path, append(slices.Clone(whole), whole[:200]...), 0o600); err != nil {
		t.Fatal(err)
	}

	s, _ = openWithRegistry(t, dir)
	if got := deadGauge(t, s); got != 150 {
		t.Fatalf("gauge = %d after the tear, want 150", got)
	}
	if ids := listDead(t, s); len(ids) != 150 || ids[149] != 149 {
		t.Fatalf("listed %d dead letters after the tear, want 150 ending at id 149", len(ids))
	}
	if info, err := os.Stat(path); err != nil || info.Size() != int64(len(whole)) {
		t.Fatalf("the torn segment is %v bytes (%v), want it cut back to %d", info.Size(), err, len(whole))
	}
	if err := s.DeadLetter(t.Context(), deadLettersOf(rnd, ReasonRejected, 1, 10)); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	s, _ = openWithRegistry(t, dir)
	defer s.Close(context.Background())
	if ids := listDead(t, s); len(ids) != 151 || ids[150] != 150 {
		t.Fatalf("after a new letter and a restart: %d listed, want 151 ending at id 150", len(ids))
	}
}

// Purging every dead letter gives their disk space back: no segment is
// left, and the count after a restart is zero.
func TestPurgingEveryDeadLetterRemovesTheirFiles(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, dir, "a")
	rnd := rand.New(rand.NewPCG(2, 7))
	// Random text, so that they fill more than one segment.
	for range 12 {
		if err := s.DeadLetter(t.Context(), deadLettersOf(rnd, ReasonRejected, 400, 2000)); err != nil {
			t.Fatal(err)
		}
	}
	if segs := withSuffix(deadFiles(t, dir), segmentSuffix); len(segs) < 2 {
		t.Fatalf("segments %v: the letters should fill more than one", segs)
	}
	if n, err := s.Purge(Filter{}); err != nil || n != 4800 {
		t.Fatalf("purge = %d, %v; want 4800", n, err)
	}
	if left := deadFiles(t, dir); len(left) != 0 {
		t.Fatalf("files left after purging every dead letter: %v", left)
	}
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	s, _ = openWithRegistry(t, dir)
	defer s.Close(context.Background())
	if got := deadGauge(t, s); got != 0 || len(listDead(t, s)) != 0 {
		t.Fatalf("gauge %d after purging everything and a restart", got)
	}
}

// A segment with half of its letters deleted is rewritten without them.
// A crash after the new revision is in place and before the old one's
// files are gone leaves both on disk: the next open keeps the new one,
// and neither revives a deleted letter nor loses a kept one.
func TestAHalfDeletedSegmentIsRewrittenAndACrashMidRewriteLosesNothing(t *testing.T) {
	dir := t.TempDir()
	s, _ := openWithRegistry(t, dir)
	rnd := rand.New(rand.NewPCG(3, 7))
	var dead []DeadLetter
	for i := range 3000 {
		reason := ReasonRejected
		if i%4 != 0 {
			reason = ReasonExpired
		}
		dead = append(dead, deadLettersOf(rnd, reason, 1, 400)...)
	}
	if err := s.DeadLetter(t.Context(), dead); err != nil {
		t.Fatal(err)
	}
	before := deadFiles(t, dir)
	old := map[string][]byte{}
	for _, name := range before {
		b, err := os.ReadFile(filepath.Join(deadDir(dir), name))
		if err != nil {
			t.Fatal(err)
		}
		old[name] = b
	}
	if n, err := s.Purge(Filter{Reason: ReasonExpired}); err != nil || n != 2250 {
		t.Fatalf("purge = %d, %v; want 2250", n, err)
	}
	after := deadFiles(t, dir)
	for _, name := range after {
		if _, kept := old[name]; kept {
			t.Fatalf("files before the purge %v, after %v: want the segment rewritten, the old revision gone", before, after)
		}
	}
	if got := deadGauge(t, s); got != 750 {
		t.Fatalf("gauge = %d after the purge, want 750", got)
	}
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Put the old revision back, with a deletion record of its own, as a
	// crash before their removal leaves them.
	for name, b := range old {
		if err := os.WriteFile(filepath.Join(deadDir(dir), name), b, 0o600); err != nil {
			t.Fatal(err)
		}
		gone := binary.BigEndian.AppendUint64(nil, 1)
		frame := append(appendFrameHeader(nil, gone), gone...)
		base := strings.TrimSuffix(name, segmentSuffix)
		if err := os.WriteFile(filepath.Join(deadDir(dir), base+goneSuffix), frame, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	s, _ = openWithRegistry(t, dir)
	defer s.Close(context.Background())
	ids := listDead(t, s)
	if len(ids) != 750 || deadGauge(t, s) != 750 {
		t.Fatalf("after the crash: %d listed, gauge %d; want 750", len(ids), deadGauge(t, s))
	}
	for _, id := range ids {
		if id%4 != 0 {
			t.Fatalf("id %d listed: it was purged", id)
		}
	}
	if files := deadFiles(t, dir); !slices.Equal(files, after) {
		t.Fatalf("files after the open %v, want the new revision alone %v", files, after)
	}
}

// A spool of the previous format keeps its dead letters in meta, in blocks
// with their count. Opened, they move to the store's files, ids kept; a
// crash before meta's copies were deleted moves nothing twice.
func TestDeadLetterBlocksInMetaMoveToTheirOwnFilesOnce(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, dir, "a")
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	rnd := rand.New(rand.NewPCG(4, 7))
	dead := deadLettersOf(rnd, ReasonRejected, 900, 300)
	for i := range dead {
		dead[i].ID = uint64(5 + i)
	}
	blocks := sealDeadBlocks(dead)
	writeMeta := func() {
		db, err := badger.Open(badger.DefaultOptions(metaDir(dir)).WithLogger(nil))
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		err = db.Update(func(txn *badger.Txn) error {
			for _, b := range blocks {
				k := binary.BigEndian.AppendUint64([]byte{prefixDeadBlock}, b.first)
				if err := txn.Set(k, b.val); err != nil {
					return err
				}
			}
			return txn.Set(deadCountKey, binary.BigEndian.AppendUint64(nil, uint64(len(dead))))
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	writeMeta()
	check := func(round string) {
		s, _ := openWithRegistry(t, dir)
		defer s.Close(context.Background())
		ids := listDead(t, s)
		if len(ids) != len(dead) || ids[0] != 5 || ids[len(ids)-1] != uint64(4+len(dead)) || deadGauge(t, s) != len(dead) {
			t.Fatalf("%s: %d listed (gauge %d), want ids 5..%d", round, len(ids), deadGauge(t, s), 4+len(dead))
		}
		err := s.meta.View(func(txn *badger.Txn) error {
			it := txn.NewIterator(badger.IteratorOptions{})
			defer it.Close()
			for it.Rewind(); it.Valid(); it.Next() {
				switch it.Item().Key()[0] {
				case prefixDeadBlock, prefixDeadCount, prefixLegacyDead:
					t.Errorf("%s: key %x left in meta", round, it.Item().Key())
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	check("moved")
	writeMeta() // as if the crash came before meta's copies were deleted
	check("moved again")
}

// A frame damaged on disk costs its own letters only: a listing, a
// replay, a purge go on with the rest, whether the damage is found when a
// walk reads the frame (an older segment) or at the open (the newest,
// checked whole for a torn end: damage followed by whole frames is not
// one, and nothing after it is cut off).
func TestADamagedDeadLetterFrameCostsOnlyItsOwnLetters(t *testing.T) {
	for _, older := range []bool{true, false} {
		t.Run(map[bool]string{true: "older segment", false: "newest segment"}[older], func(t *testing.T) {
			dir := t.TempDir()
			s, _ := openWithRegistry(t, dir)
			rnd := rand.New(rand.NewPCG(5, 7))
			storeDeadLetters(t, s, rnd, 3, 100, 300) // a frame each
			path := filepath.Join(deadDir(dir), withSuffix(deadFiles(t, dir), segmentSuffix)[0])
			want := 200
			if older {
				// A new segment after a restart makes the first an older one.
				s, _ = openWithRegistry(t, dir)
				storeDeadLetters(t, s, rnd, 1, 1, 10)
				want++
			}
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			// Into the second frame's payload, past its header.
			second := frameHeaderLen + int(binary.BigEndian.Uint32(data[0:4]))
			data[second+frameHeaderLen+deadFrameMetaLen+40] ^= 0xff
			if err := os.WriteFile(path, data, 0o600); err != nil {
				t.Fatal(err)
			}
			s, _ = openWithRegistry(t, dir)
			defer s.Close(context.Background())
			ids := listDead(t, s)
			if len(ids) != want || ids[99] != 99 || ids[100] != 200 {
				t.Fatalf("listed %d dead letters; want %d: the first and third frames' and any new one, without ids 100..199", len(ids), want)
			}
			if n, err := s.Purge(Filter{}); err != nil || n != want {
				t.Fatalf("purge = %d, %v; want the %d readable ones", n, err, want)
			}
		})
	}
}

// runDeadPurgeCrashChild stores dead letters numbered in their events,
// every other one expired, and purges the expired ones after each store,
// which rewrites the segments holding them, until it is killed: "stored
// N" once letters 0 to N-1 are durable, "purged N" once the expired ones
// among them are gone.
func runDeadPurgeCrashChild(dir string) int {
	s, err := Open(Config{Dir: dir, Consumers: []string{"a"}}, nil, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, "child: open:", err)
		return 3
	}
	pad := strings.Repeat("x", 500)
	for n := 0; ; {
		dead := make([]DeadLetter, 300)
		for i := range dead {
			reason := ReasonRejected
			if (n+i)%2 == 1 {
				reason = ReasonExpired
			}
			dead[i] = DeadLetter{Destination: "a", Reason: reason, Event: fmt.Appendf(nil, `{"n":%d,"pad":%q}`, n+i, pad)}
		}
		if err := s.DeadLetter(context.Background(), dead); err != nil {
			fmt.Fprintln(os.Stderr, "child: dead letter:", err)
			return 3
		}
		n += len(dead)
		fmt.Printf("stored %d\n", n)
		if _, err := s.Purge(Filter{Reason: ReasonExpired}); err != nil {
			fmt.Fprintln(os.Stderr, "child: purge:", err)
			return 3
		}
		fmt.Printf("purged %d\n", n)
	}
}

// kill -9 while dead letters are stored and purged, segments rewritten
// under the purges: every acknowledged letter that was not purged is
// there once, no purged one comes back, and the count says how many are
// listed. Each round kills the child at another point of its cycle.
func TestKilledWhilePurgingDeadLettersKeepsTheRestAndRevivesNothing(t *testing.T) {
	t.Parallel()
	for round := range 4 {
		dir := t.TempDir()
		cmd, sc := startCrashChild(t, dir, crashModeDeadPurges)
		stored, purged, lines := 0, 0, 0
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "stored "); ok {
				stored, _ = strconv.Atoi(v)
			} else if v, ok := strings.CutPrefix(sc.Text(), "purged "); ok {
				purged, _ = strconv.Atoi(v)
			}
			// Past a few segments, at a point that moves with the round.
			if lines++; lines >= 60+3*round {
				break
			}
		}
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()
		if purged == 0 {
			t.Fatalf("round %d: the child purged nothing", round)
		}

		s, _ := openWithRegistry(t, dir)
		seen := map[int]bool{}
		err := s.DeadLetters(Filter{}, func(d DeadLetter) error {
			var ev struct{ N int }
			if err := json.Unmarshal(d.Event, &ev); err != nil {
				return err
			}
			if seen[ev.N] {
				return fmt.Errorf("letter %d listed twice", ev.N)
			}
			seen[ev.N] = true
			if ev.N%2 == 1 && ev.N < purged {
				return fmt.Errorf("letter %d was purged and is back", ev.N)
			}
			return nil
		})
		gauge := deadGauge(t, s)
		_ = s.Close(context.Background())
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		for n := 0; n < stored; n += 2 {
			if !seen[n] {
				t.Fatalf("round %d: letter %d was acknowledged, never purged, and is gone (%d stored, %d purged)", round, n, stored, purged)
			}
		}
		if gauge != len(seen) {
			t.Fatalf("round %d: the count says %d, %d are listed", round, gauge, len(seen))
		}
	}
}

// A disk that fills while dead letters are written: the write that does
// not fit is refused as ErrFull and leaves nothing half written, every
// acknowledged letter is listed, before and after a restart, and the
// store takes letters again once space returns.
func TestADiskFullOfDeadLettersKeepsTheAcknowledgedAndRecovers(t *testing.T) {
	t.Parallel()
	mnt := mountTmpfs(t, "96m")
	ballast := filepath.Join(mnt, "ballast")
	if err := os.WriteFile(ballast, make([]byte, 40<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(mnt, "spool")
	s := openTest(t, dir, "a")
	acked := 0
	var err error
	for range 10000 {
		dead := make([]DeadLetter, 100)
		for i, e := range randomEvents(len(dead), 2000) {
			dead[i] = DeadLetter{Destination: "a", Reason: ReasonRejected, Event: e.Data}
		}
		if err = s.DeadLetter(t.Context(), dead); err != nil {
			break
		}
		acked += len(dead)
	}
	if !errors.Is(err, ErrFull) {
		t.Fatalf("filling the disk with dead letters ended with %v after %d, want ErrFull", err, acked)
	}
	if got := len(listDead(t, s)); got != acked || deadGauge(t, s) != acked {
		t.Fatalf("%d listed, gauge %d, after the disk filled; want the %d acknowledged", got, deadGauge(t, s), acked)
	}
	if err := os.Remove(ballast); err != nil {
		t.Fatal(err)
	}
	if err := s.DeadLetter(t.Context(), deadLettersOf(rand.New(rand.NewPCG(6, 7)), ReasonRejected, 1, 10)); err != nil {
		t.Fatalf("a dead letter once space returned: %v", err)
	}
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	s = openTest(t, dir, "a")
	defer s.Close(context.Background())
	if got := len(listDead(t, s)); got != acked+1 {
		t.Fatalf("%d listed after a restart, want %d", got, acked+1)
	}
}

// Files in dead/ that the store did not write (an operator's notes, a
// copy made by hand) neither stop the start nor are removed.
func TestFilesTheDeadLetterStoreDidNotWriteAreLeftAlone(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, dir, "a")
	storeDeadLetters(t, s, rand.New(rand.NewPCG(8, 7)), 1, 10, 100)
	for _, name := range []string{"notes.txt", "copy.seg", "copy.gone"} {
		if err := os.WriteFile(filepath.Join(deadDir(dir), name), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	s, _ = openWithRegistry(t, dir)
	defer s.Close(context.Background())
	if n := len(listDead(t, s)); n != 10 || deadGauge(t, s) != 10 {
		t.Fatalf("%d listed, gauge %d; want the 10 stored", n, deadGauge(t, s))
	}
	for _, name := range []string{"notes.txt", "copy.seg", "copy.gone"} {
		if _, err := os.Stat(filepath.Join(deadDir(dir), name)); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// Dead letters stored, listed and purged at once, segments rewritten
// under the walks: every walk sees ids in order and once, every purge
// counts what it removed, and at the end the count matches the listing,
// which holds every letter stored and not purged.
func TestDeadLettersStoredListedAndPurgedAtOnceStayConsistent(t *testing.T) {
	dir := t.TempDir()
	s, _ := openWithRegistry(t, dir)
	defer s.Close(context.Background())
	rnd := rand.New(rand.NewPCG(9, 7))
	const rounds = 40
	batches := make([][]DeadLetter, rounds)
	for i := range batches {
		batches[i] = deadLettersOf(rnd, ReasonRejected, 100, 400)
		for j := range batches[i] {
			if j%2 == 1 {
				batches[i][j].Reason = ReasonExpired
			}
		}
	}
	done := make(chan struct{})
	errs := make(chan error, 3)
	go func() {
		defer close(done)
		for _, b := range batches {
			if err := s.DeadLetter(context.Background(), b); err != nil {
				errs <- err
				return
			}
		}
	}()
	walk := func() error {
		var last uint64
		first := true
		return s.DeadLetters(Filter{}, func(d DeadLetter) error {
			if !first && d.ID <= last {
				return fmt.Errorf("a walk gave id %d after %d", d.ID, last)
			}
			first, last = false, d.ID
			return nil
		})
	}
	var purged int
	for running := true; running; {
		select {
		case <-done:
			running = false
		default:
		}
		n, err := s.Purge(Filter{Reason: ReasonExpired})
		if err != nil {
			t.Fatal(err)
		}
		purged += n
		if err := walk(); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}
	n, err := s.Purge(Filter{Reason: ReasonExpired})
	if err != nil {
		t.Fatal(err)
	}
	purged += n
	ids := listDead(t, s)
	if purged != rounds*50 || len(ids) != rounds*50 || deadGauge(t, s) != rounds*50 {
		t.Fatalf("purged %d, listed %d, gauge %d; want %d each", purged, len(ids), deadGauge(t, s), rounds*50)
	}
}
