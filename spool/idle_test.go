package spool

import (
	"context"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/spillwayhq/spillway/internal/testkit"
)

// spoolFiles lists every file under dir with its modification time.
func spoolFiles(t *testing.T, dir string) map[string]time.Time {
	t.Helper()
	files := map[string]time.Time{}
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if info, err := d.Info(); err == nil && !d.IsDir() {
			files[path] = info.ModTime()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// inBubble runs fn under synctest, on a spool of cfg opened in the bubble
// (whose clock is the bubble's) and closed after fn.
func inBubble(t *testing.T, cfg Config, fn func(t *testing.T, s *Spool)) {
	// zstd coders hold channels: those made in the bubble must not go on
	// serving the other tests from the process-wide free lists.
	defer encoders.drain()
	defer decoders.drain()
	synctest.Test(t, func(t *testing.T) {
		s, err := Open(cfg, nil, prometheus.NewRegistry())
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close(context.Background())
		fn(t, s)
	})
}

// TestAnIdleHourCostsNoPassAndTheFirstEventAfterItIsCommittedAtOnce runs
// under synctest: the hour is the bubble's clock, not the machine's.
func TestAnIdleHourCostsNoPassAndTheFirstEventAfterItIsCommittedAtOnce(t *testing.T) {
	dir := t.TempDir()
	inBubble(t, Config{Dir: dir, Consumers: []string{"a"}}, func(t *testing.T, s *Spool) {
		if err := s.Append(t.Context(), events(0, 10), nil); err != nil {
			t.Fatal(err)
		}
		recs, err := s.Read("a", 100, 1<<20)
		if err != nil || len(recs) != 10 {
			t.Fatalf("read %d records, %v; want 10", len(recs), err)
		}
		if err := s.Ack("a", recs[len(recs)-1].Seq+1); err != nil {
			t.Fatal(err)
		}
		// The delivered generation is rotated out genMaxAge after its
		// first events and removed; then nothing is left to do.
		time.Sleep(genMaxAge + 5*time.Second)
		synctest.Wait()
		settled := s.maintenancePasses.Load()
		files := spoolFiles(t, dir)
		s.genMu.Lock()
		gens, spare := len(s.gens), s.spare
		s.genMu.Unlock()
		if gens != 1 || spare != nil {
			t.Fatalf("after the delivered events' generation was rotated: %d generations and spare %v, want the empty active one alone", gens, spare)
		}

		time.Sleep(time.Hour)
		synctest.Wait()
		if n := s.maintenancePasses.Load() - settled; n != 0 {
			t.Errorf("an idle hour made %d maintenance passes, want 0", n)
		}
		after := spoolFiles(t, dir)
		if len(after) != len(files) {
			t.Errorf("an idle hour changed the spool's files: %d before, %d after", len(files), len(after))
		}
		for path, mod := range files {
			if !after[path].Equal(mod) {
				t.Errorf("an idle hour wrote %s", path)
			}
		}

		// The first event after the hour commits into the open active
		// generation: no database is created on its way, and readers are
		// told at once. The bubble's clock stands still while it commits.
		changed := s.Changed()
		start := time.Now()
		if err := s.Append(t.Context(), events(10, 1), nil); err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); d != 0 {
			t.Errorf("the first append after an idle hour waited %v on a timer", d)
		}
		select {
		case <-changed:
		default:
			t.Fatal("the commit did not tell readers")
		}
		recs, err = s.Read("a", 100, 1<<20)
		if err != nil || len(recs) != 1 || recs[0].Seq != 10 {
			t.Fatalf("read %v, %v; want the event numbered 10", recs, err)
		}
		synctest.Wait() // the committer rotates, if it does, after answering
		s.genMu.Lock()
		gens = len(s.gens)
		s.genMu.Unlock()
		if gens != 1 {
			t.Errorf("the first commit after an idle hour rotated the generation: %d generations", gens)
		}
		if err := s.Ack("a", 11); err != nil {
			t.Fatal(err)
		}
		// The acknowledgement is saved within cursorSaveEvery.
		time.Sleep(cursorSaveEvery)
		synctest.Wait()
		if got := s.consumers["a"].saved.Load(); got != 11 {
			t.Errorf("saved cursor %d %v after the acknowledgement, want 11", got, cursorSaveEvery)
		}
	})
}

// Badger's compactors are off, so meta's level 0 grows with every memtable
// flush until the maintenance loop compacts it.
func TestMaintenanceCompactsMetaWithoutBadgerCompactors(t *testing.T) {
	s := openTest(t, t.TempDir(), "a")
	defer s.Close(context.Background())
	// Small writes, as cursor saves and read marks are, through meta's
	// 512 KiB memtable: a table in level 0 for each flush.
	const prefix, n, perTxn = 0xee, 60000, 500
	val := []byte(strings.Repeat("v", 64))
	for i := 0; i < n; i += perTxn {
		err := s.meta.Update(func(txn *badger.Txn) error {
			for j := i; j < i+perTxn; j++ {
				if err := txn.Set(binary.BigEndian.AppendUint64([]byte{prefix}, uint64(j)), val); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	// The loop's first pass may come while the flushes are still being
	// made, compacting some of them: what counts is that level 0 ends
	// below the bound with the rest compacted below it. Each look is a
	// wake-up of the loop, as a stored dead letter makes one.
	compacted := func() bool {
		s.noteDeadWrite()
		levels := s.meta.Levels()
		below := 0
		for _, l := range levels[1:] {
			below += l.NumTables
		}
		return levels[0].NumTables < metaMaxL0Tables && below > 0
	}
	testkit.Eventually(t, compacted, "meta's level 0 compacted: levels %v", func() any { return s.meta.Levels() })
	got := 0
	err := s.meta.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{prefix}})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			got++
		}
		return nil
	})
	if err != nil || got != n {
		t.Errorf("%d keys after compaction (%v), want %d", got, err, n)
	}
}

// Once every destination has caught up, the memory kept for a spool under
// load goes, and reading on is unaffected.
// A quiet spool hands back its heap 5 s after its last event, and its
// last encoder and the program's pages after 30 s, once each: waking from
// a short pause must not pay for them, and an idle spool must not keep
// releasing.
func TestAQuietSpoolHandsBackMemoryOnceAndTheProgramLater(t *testing.T) {
	inBubble(t, Config{Dir: t.TempDir(), Consumers: []string{"a"}}, func(t *testing.T, s *Spool) {
		count := func() (int64, int64) {
			synctest.Wait()
			return s.releases.Load(), s.rests.Load()
		}
		time.Sleep(idleRest)
		if rel, rest := count(); rel != 0 || rest != 1 {
			t.Errorf("%v after start-up: %d heap releases, %d of the program's pages, want 0 and 1", idleRest, rel, rest)
		}
		for i := range 3 { // an event every 10 s
			if err := s.Append(t.Context(), events(i, 1), nil); err != nil {
				t.Fatal(err)
			}
			time.Sleep(10 * time.Second)
		}
		if rel, rest := count(); rel != 3 || rest != 1 {
			t.Errorf("after an event every 10 s: %d heap releases, %d of the program's pages, want 3 and still 1", rel, rest)
		}
		if n := len(encoders.free); n != 1 {
			t.Errorf("after a short pause %d encoders kept, want 1 for the next event", n)
		}
		time.Sleep(time.Hour)
		if rel, rest := count(); rel != 3 || rest != 2 {
			t.Errorf("after an idle hour: %d heap releases, %d of the program's pages, want 3 and 2", rel, rest)
		}
		if n := len(encoders.free); n != 0 {
			t.Errorf("after a rest %d encoders kept, want none", n)
		}
	})
}

func TestReleasedMemoryLeavesReadingIntact(t *testing.T) {
	s := openTest(t, t.TempDir(), "a", "b")
	defer s.Close(context.Background())
	if err := s.Append(t.Context(), events(0, 50), nil); err != nil {
		t.Fatal(err)
	}
	for _, c := range []string{"a", "b"} {
		recs := readAll(t, s, c)
		if err := s.Ack(c, recs[len(recs)-1].Seq+1); err != nil {
			t.Fatal(err)
		}
	}
	// A burst leaves a coder of each kind per core.
	encoders.put(encoders.build())
	encoders.put(encoders.build())
	s.releaseMemory()
	s.mu.Lock()
	recent, hot := len(s.recent), s.hot.buf != nil
	s.mu.Unlock()
	if recent != 0 || hot || s.consumers["a"].block.raw != nil {
		t.Errorf("after a drain: %d recent blocks, the newest block uncompressed (%v) and a decoded block kept, want none", recent, hot)
	}
	if n := len(encoders.free); n > 1 {
		t.Errorf("after a drain: %d encoders kept, want at most 1", n)
	}
	if err := s.Append(t.Context(), events(50, 10), nil); err != nil {
		t.Fatal(err)
	}
	for _, c := range []string{"a", "b"} {
		recs := readAll(t, s, c)
		if len(recs) != 10 || recs[0].Seq != 50 || string(recs[9].Data) != `{"n":59}` {
			t.Errorf("%s read %d records after the release, want events 50 to 59", c, len(recs))
		}
	}
}

// Under --sync=interval the background fsync runs within SyncInterval of
// a write, once for all writes meanwhile, and not at all while nothing is
// written: on a ticker an idle spool synced 20 times a second.
func TestIntervalSyncRunsOnlyAfterWrites(t *testing.T) {
	inBubble(t, Config{Dir: t.TempDir(), Consumers: []string{"a"}, Sync: SyncInterval}, func(t *testing.T, s *Spool) {
		syncs := func() uint64 {
			t.Helper()
			var m dto.Metric
			if err := s.metrics.fsync.Write(&m); err != nil {
				t.Fatal(err)
			}
			return m.GetHistogram().GetSampleCount()
		}
		time.Sleep(time.Hour)
		synctest.Wait()
		if n := syncs(); n != 0 {
			t.Fatalf("an idle hour made %d background syncs, want 0", n)
		}
		for i := range 3 {
			if err := s.Append(t.Context(), events(i, 1), nil); err != nil {
				t.Fatal(err)
			}
		}
		synctest.Wait()
		if n := syncs(); n != 0 {
			t.Fatalf("%d syncs before SyncInterval passed, want 0", n)
		}
		time.Sleep(DefaultSyncInterval)
		synctest.Wait()
		if n := syncs(); n != 1 {
			t.Fatalf("%d syncs SyncInterval after three commits, want 1", n)
		}
		// A cursor saved is a meta write: synced too, then nothing more.
		if err := s.Ack("a", 3); err != nil {
			t.Fatal(err)
		}
		time.Sleep(cursorSaveEvery + DefaultSyncInterval)
		synctest.Wait()
		if n := syncs(); n != 2 {
			t.Fatalf("%d syncs after the cursor was saved, want 2", n)
		}
		time.Sleep(time.Hour)
		synctest.Wait()
		if n := syncs(); n != 2 {
			t.Errorf("%d syncs after an idle hour, want still 2", n)
		}
	})
}

// The spool is locked before Open touches anything in it: a second Open
// fails without sweeping the first one's files or creating a generation.
func TestASecondOpenOfALockedSpoolTouchesNothing(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(Config{Dir: dir, Consumers: []string{"a"}}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	// What a writeFileDurably of the running spool has in flight.
	inFlight := filepath.Join(dir, "lease"+tmpSuffix)
	if err := os.WriteFile(inFlight, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	gens := func() int {
		found, err := listGenerations(dir)
		if err != nil {
			t.Fatal(err)
		}
		return len(found)
	}
	before := gens()
	if _, err := Open(Config{Dir: dir, Consumers: []string{"a"}}, nil, nil); !errors.Is(err, ErrLocked) {
		t.Fatalf("second Open: %v, want ErrLocked", err)
	}
	if _, err := os.Stat(inFlight); err != nil {
		t.Errorf("the refused Open swept the running spool's file: %v", err)
	}
	if after := gens(); after != before {
		t.Errorf("the refused Open changed the generations: %d before, %d after", before, after)
	}
	if err := s.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	s, err = Open(Config{Dir: dir, Consumers: []string{"a"}}, nil, nil)
	if err != nil {
		t.Fatalf("Open after Close: %v", err)
	}
	if err := s.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
}

// TestACommitWakesMaintenanceWhileAPassWaitsForTheAgeDeadline: once a
// pass had set the next one for the active generation's age deadline (a
// minute away), commits no longer woke the maintenance loop, so the
// spool's size went unmeasured for as long: a spool filling past
// --spool-max-bytes neither refused nor dropped, and a full disk went
// unnoticed. A commit now brings a pass within maintenanceEvery.
func TestACommitWakesMaintenanceWhileAPassWaitsForTheAgeDeadline(t *testing.T) {
	inBubble(t, Config{Dir: t.TempDir(), Consumers: []string{"a"}}, func(t *testing.T, s *Spool) {
		if err := s.Append(t.Context(), events(0, 10), nil); err != nil {
			t.Fatal(err)
		}
		// The pass after it prepares the spare and sets the next one for
		// the generation's age deadline.
		time.Sleep(3 * maintenanceEvery)
		synctest.Wait()
		before := s.maintenancePasses.Load()
		if err := s.Append(t.Context(), events(10, 10), nil); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * maintenanceEvery)
		synctest.Wait()
		if got := s.maintenancePasses.Load() - before; got == 0 {
			t.Fatalf("no maintenance pass within %v of a commit (the next was due at the age deadline, %v away)", 2*maintenanceEvery, genMaxAge)
		}
	})
}
