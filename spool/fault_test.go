package spool

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/spillwayhq/spillway/internal/testkit"
)

// mountTmpfs mounts a small tmpfs for a full-disk test, or skips where
// mounting is not allowed (not root, or no mount namespace rights).
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("full-disk test needs to mount a tmpfs (run as root): %v %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", "-l", dir).Run() })
	return dir
}

func randomEvents(n, size int) []Event {
	out := make([]Event, n)
	for i := range out {
		b := make([]byte, size)
		_, _ = rand.Read(b)
		// Random bytes do not compress: the disk fills at the raw rate.
		out[i] = Event{Data: []byte(fmt.Sprintf(`{"n":%d,"r":"%x"}`, i, b))}
	}
	return out
}

func TestFullDiskAnswersFullKeepsWhatWasStoredAndRecovers(t *testing.T) {
	t.Parallel()
	mnt := mountTmpfs(t, "160m")
	ballast := filepath.Join(mnt, "ballast")
	if err := os.WriteFile(ballast, make([]byte, 40<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(mnt, "spool")
	s := openTest(t, dir, "a")
	defer s.Close(context.Background())

	acked := 0
	var err error
	for i := 0; i < 10000; i++ {
		if err = s.Append(t.Context(), randomEvents(50, 1000), nil); err != nil {
			break
		}
		acked += 50
	}
	if !errors.Is(err, ErrFull) {
		t.Fatalf("filling the disk ended with %v after %d events, want ErrFull", err, acked)
	}
	if s.Ready() == nil {
		t.Fatal("spool reports ready on a full disk")
	}
	got := readAll(t, s, "a")
	if len(got) != acked {
		t.Fatalf("read %d events after the disk filled, want every one of the %d acknowledged", len(got), acked)
	}

	if err := os.Remove(ballast); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, func() bool { return s.Ready() == nil }, "the spool did not accept events once space returned")
	if err := s.Append(t.Context(), randomEvents(1, 100), nil); err != nil {
		t.Fatalf("append once space returned: %v", err)
	}
}

func TestSpoolDamagedWhileStoppedRecoversIntactDataOrRefusesClearly(t *testing.T) {
	cases := map[string]func(t *testing.T, genDir string){
		"garbage over the manifest": func(t *testing.T, genDir string) {
			writeGarbage(t, filepath.Join(genDir, "MANIFEST"), 0)
		},
		"a truncated value log": func(t *testing.T, genDir string) {
			vlog := onlyFile(t, genDir, ".vlog")
			info, _ := os.Stat(vlog)
			if err := os.Truncate(vlog, info.Size()/2); err != nil {
				t.Fatal(err)
			}
		},
		"garbage in the middle of the value log": func(t *testing.T, genDir string) {
			writeGarbage(t, onlyFile(t, genDir, ".vlog"), 4096)
		},
		"a missing value log": func(t *testing.T, genDir string) {
			if err := os.Remove(onlyFile(t, genDir, ".vlog")); err != nil {
				t.Fatal(err)
			}
		},
	}
	for name, damage := range cases {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			s := openTest(t, dir, "a")
			var want []string
			for i := 0; i < 20; i++ {
				evs := randomEvents(10, 200)
				if err := s.Append(t.Context(), evs, nil); err != nil {
					t.Fatal(err)
				}
				for _, e := range evs {
					want = append(want, string(e.Data))
				}
			}
			if err := s.Close(t.Context()); err != nil {
				t.Fatal(err)
			}
			gens, _ := listGenerations(dir)
			damage(t, gens[0].dir)

			s2, err := Open(Config{Dir: dir, Consumers: []string{"a"}}, nil, nil)
			if err != nil {
				if !strings.Contains(err.Error(), filepath.Base(gens[0].dir)) {
					t.Fatalf("refusal does not name the damaged generation: %v", err)
				}
				return
			}
			defer s2.Close(context.Background())
			got := readAll(t, s2, "a")
			// Whatever is read must be intact, in order, and a prefix-free
			// subsequence of what was written; what is missing must be
			// accounted for as a quarantined block.
			i := 0
			for _, r := range got {
				for i < len(want) && want[i] != string(r.Data) {
					i++
				}
				if i == len(want) {
					t.Fatalf("read an event that was never written: %.60s", r.Data)
				}
			}
			// Nothing vanishes silently: every event written is either read
			// or inside a block the dead-letter store accounts for.
			lost := 0
			_ = s2.DeadLetters(Filter{Reason: ReasonCorrupt}, func(d DeadLetter) error {
				var ce corruptEvent
				if err := json.Unmarshal(d.Event, &ce); err != nil || !strings.HasPrefix(ce.Generation, "gen-") {
					t.Fatalf("corrupt dead letter %s: %v; want its generation named", d.Event, err)
				}
				lost += int(ce.Events)
				return nil
			})
			t.Logf("recovered %d of %d events; %d in quarantined blocks", len(got), len(want), lost)
			if len(got)+lost != len(want) {
				t.Fatalf("%d read + %d quarantined != %d written", len(got), lost, len(want))
			}
		})
	}
}

func writeGarbage(t *testing.T, path string, at int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(bytes.Repeat([]byte{0xde, 0xad, 0xbe, 0xef}, 256), at); err != nil {
		t.Fatal(err)
	}
}

func onlyFile(t *testing.T, dir, suffix string) string {
	t.Helper()
	matches, _ := filepath.Glob(filepath.Join(dir, "*"+suffix))
	if len(matches) == 0 {
		t.Fatalf("no %s file in %s", suffix, dir)
	}
	return matches[0]
}

func TestIntervalSyncAcknowledgesWithoutWaitingForFsync(t *testing.T) {
	s, err := Open(Config{Dir: t.TempDir(), Sync: SyncInterval, SyncInterval: 10 * time.Millisecond, Consumers: []string{"a"}}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())
	for i := 0; i < 20; i++ {
		if err := s.Append(t.Context(), events(i, 1), nil); err != nil {
			t.Fatal(err)
		}
	}
	if got := len(readAll(t, s, "a")); got != 20 {
		t.Fatalf("read %d, want 20", got)
	}
}

func TestDropOldestMakesRoomAndCountsWhatEachDestinationLost(t *testing.T) {
	reg := prometheus.NewRegistry()
	dir := t.TempDir()
	s, err := Open(Config{Dir: dir, MaxBytes: 24 << 20, WhenFull: DropOldest, Consumers: []string{"slow", "dead"}}, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())
	// "slow" delivers a little, "dead" nothing; random data fills
	// generations at its raw size.
	dropped := func() bool { return testutil.ToFloat64(s.metrics.dropped.WithLabelValues("dead", "spool_full")) > 0 }
	fillUntilDropped(t, s, dropped, func() {
		if err := s.Append(t.Context(), randomEvents(100, 1000), nil); err != nil {
			t.Fatalf("append with drop-oldest = %v; it must make room, not refuse", err)
		}
		if recs, _ := s.Read("slow", 10, 1<<20); len(recs) > 0 {
			_ = s.Ack("slow", recs[len(recs)-1].Seq+1)
		}
	})
	deadDropped := testutil.ToFloat64(s.metrics.dropped.WithLabelValues("dead", "spool_full"))
	slowDropped := testutil.ToFloat64(s.metrics.dropped.WithLabelValues("slow", "spool_full"))
	cursor, _ := s.Cursor("dead")
	if uint64(deadDropped) != cursor {
		t.Fatalf("dead lost %v events by the counter, but its cursor moved to %d", deadDropped, cursor)
	}
	if slowDropped >= deadDropped {
		t.Fatalf("slow lost %v, dead %v: what was delivered must not count as dropped", slowDropped, deadDropped)
	}
	// What is left is readable and starts where the cursor now is.
	recs, err := s.Read("dead", 5, 1<<20)
	if err != nil || len(recs) == 0 || recs[0].Seq < cursor {
		t.Fatalf("after the drop, dead reads %d records from %v (err %v), cursor %d", len(recs), seqs(recs), err, cursor)
	}
}

// TestFullSpoolRefusesWithoutWaitingForTheNextMeasurement: the disk is
// measured once a second, but what is committed in between counts at
// once, so a burst stops near --spool-max-bytes, not a second of writes
// past it. Once the destination has caught up, the spool has room again
// within seconds, though it is smaller than one generation.
func TestFullSpoolRefusesWithoutWaitingForTheNextMeasurement(t *testing.T) {
	const maxBytes = 2 << 20
	dir := t.TempDir()
	s, err := Open(Config{Dir: dir, MaxBytes: maxBytes, Consumers: []string{"a"}}, nil, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())
	if room := maxBytes - s.measured.Load(); room < maxBytes/2 {
		t.Fatalf("an empty spool takes %d bytes: no room to test in", s.measured.Load())
	}
	for i := 0; ; i++ {
		err := s.Append(t.Context(), randomEvents(20, 1000), nil)
		if err == ErrFull {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if i > 500 {
			t.Fatal("no ErrFull after 40 MB into a 2 MiB spool")
		}
	}
	if used := DiskUsage(dir); used > maxBytes+maxBlockBytes {
		t.Fatalf("first refused at %d bytes on disk; the bound is %d", used, maxBytes)
	}

	all := readAll(t, s, "a")
	if err := s.Ack("a", all[len(all)-1].Seq+1); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, func() bool { return s.Ready() == nil }, "the spool did not accept events once space returned")
}

// TestDropOldestCountsWhatWasInFlight: events a destination has read and
// not yet acknowledged lose their stored copy with their generation. A
// stop before they are delivered loses them, so they are counted dropped:
// everything the reopened spool no longer holds for the destination is in
// the count.
func TestDropOldestCountsWhatWasInFlight(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{Dir: dir, MaxBytes: 8 << 20, WhenFull: DropOldest, Consumers: []string{"a"}}
	s, err := Open(cfg, nil, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	appended := 0
	appendSome := func() {
		t.Helper()
		if err := s.Append(t.Context(), randomEvents(100, 1000), nil); err != nil {
			t.Fatalf("append with drop-oldest = %v", err)
		}
		appended += 100
	}
	appendSome()
	inFlight, err := s.Read("a", 60, 1<<30)
	if err != nil || len(inFlight) != 60 {
		t.Fatalf("read %d records, err %v", len(inFlight), err)
	}
	dropped := func() float64 { return testutil.ToFloat64(s.metrics.dropped.WithLabelValues("a", "spool_full")) }
	fillUntilDropped(t, s, func() bool { return dropped() > 0 }, appendSome)
	cursor, _ := s.Cursor("a")
	if want := float64(cursor); dropped() != want {
		t.Fatalf("counted %v dropped; the cursor moved from 0 to %d, past the 60 events in flight: want %v", dropped(), cursor, want)
	}
	// Stopped with the 60 never acknowledged, as by a shutdown while the
	// destination fails.
	lost := dropped()
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	s = openTest(t, dir, "a")
	defer s.Close(context.Background())
	left := 0
	for {
		recs, err := s.Read("a", 1000, 1<<30)
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) == 0 {
			break
		}
		left += len(recs)
		if err := s.Ack("a", recs[len(recs)-1].Seq+1); err != nil {
			t.Fatal(err)
		}
	}
	if float64(appended-left) != lost {
		t.Errorf("appended %d, %d left after the restart: %d gone, %v counted dropped", appended, left, appended-left, lost)
	}
}

// closedSpoolWithATable writes a thousand events into a spool and closes
// it, which writes its generation's keys into a table; it returns the
// spool's directory and the table.
func closedSpoolWithATable(t *testing.T) (dir, table string) {
	t.Helper()
	dir = t.TempDir()
	s := openTest(t, dir, "a")
	for range 20 {
		if err := s.Append(t.Context(), events(0, 50), nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	tables, _ := filepath.Glob(filepath.Join(dir, "gen-*", "*.sst"))
	if len(tables) == 0 {
		t.Fatal("no table written at close")
	}
	return dir, tables[0]
}

// TestADamagedTableStopsTheStartNamingItsGeneration: a table holds the
// keys that list a generation's blocks; damaged, it could hide blocks or
// list ones that are not there. The start refuses, naming the generation,
// instead of delivering around the damage without a word.
func TestADamagedTableStopsTheStartNamingItsGeneration(t *testing.T) {
	dir, table := closedSpoolWithATable(t)
	b, err := os.ReadFile(table)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/3] ^= 0x01
	if err := os.WriteFile(table, b, 0o600); err != nil {
		t.Fatal(err)
	}
	gen := filepath.Base(filepath.Dir(table))
	var logs bytes.Buffer
	if s, err := Open(Config{Dir: dir, Consumers: []string{"a"}}, slog.New(slog.NewJSONHandler(&logs, nil)), prometheus.NewRegistry()); err == nil {
		s.Close(context.Background())
		t.Fatalf("opened a spool whose %s has a damaged table", gen)
	} else if !strings.Contains(err.Error(), gen) {
		t.Fatalf("open: %v; want the damaged generation %s named", err, gen)
	}
	// Badger's own error line goes through the spool's logger (JSON here),
	// not as plain text to stderr.
	if !strings.Contains(logs.String(), `"source":"badger"`) || !strings.Contains(logs.String(), "checksum") {
		t.Errorf("Badger's error is not in the spool's log: %s", logs.String())
	}
}

// TestACutShortTableStopsTheStartNamingItsGeneration: Badger reads a
// table's footer unchecked, in a goroutine of its own; cut short, the
// table was a panic that ended the process naming nothing.
func TestACutShortTableStopsTheStartNamingItsGeneration(t *testing.T) {
	for _, size := range []int64{3, 100} {
		dir, table := closedSpoolWithATable(t)
		if err := os.Truncate(table, size); err != nil {
			t.Fatal(err)
		}
		gen := filepath.Base(filepath.Dir(table))
		if s, err := Open(Config{Dir: dir, Consumers: []string{"a"}}, nil, prometheus.NewRegistry()); err == nil {
			s.Close(context.Background())
			t.Fatalf("opened a spool whose %s has a table cut to %d bytes", gen, size)
		} else if !strings.Contains(err.Error(), gen) || !strings.Contains(err.Error(), "cut short") {
			t.Fatalf("open with a table cut to %d bytes: %v; want the generation named", size, err)
		}
	}
}

// TestATornTableTheManifestDoesNotListDoesNotStopTheStart: a power cut
// while Badger builds a table (meta flushes one at start-up, replaying
// its log) can leave whatever the disk kept of it; the MANIFEST does not
// list it yet and Badger deletes it. The footer check took it for damage
// and spillway refused to start. The spool's events and dead letters all
// remain.
func TestATornTableTheManifestDoesNotListDoesNotStopTheStart(t *testing.T) {
	dir, table := closedSpoolWithATable(t)
	torn := make([]byte, 200)
	for i := range torn {
		torn[i] = byte(i*7 + 1) // no zeros: lengths that cannot fit
	}
	for _, d := range []string{filepath.Dir(table), metaDir(dir)} {
		if err := os.WriteFile(filepath.Join(d, "999999.sst"), torn, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	s, err := Open(Config{Dir: dir, Consumers: []string{"a"}}, nil, prometheus.NewRegistry())
	if err != nil {
		t.Fatalf("a torn table outside the MANIFEST stopped the start: %v", err)
	}
	defer s.Close(context.Background())
	if got := readAll(t, s, "a"); len(got) != 20*50 {
		t.Errorf("read %d events after the start, want %d", len(got), 20*50)
	}
}

// TestAGenerationWithoutItsManifestStopsTheStart: a read-write open would
// start it anew, deleting the tables that list its blocks.
func TestAGenerationWithoutItsManifestStopsTheStart(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, dir, "a")
	if err := s.Append(t.Context(), events(0, 50), nil); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	gens, err := listGenerations(dir)
	if err != nil || len(gens) == 0 {
		t.Fatalf("generations: %v %v", gens, err)
	}
	gen := gens[0].dir
	if err := os.Rename(filepath.Join(gen, "MANIFEST"), filepath.Join(dir, "MANIFEST.away")); err != nil {
		t.Fatal(err)
	}
	if s, err := Open(Config{Dir: dir, Consumers: []string{"a"}}, nil, prometheus.NewRegistry()); err == nil {
		s.Close(context.Background())
		t.Fatalf("opened a spool whose %s lost its MANIFEST", filepath.Base(gen))
	} else if !strings.Contains(err.Error(), filepath.Base(gen)) || !strings.Contains(err.Error(), "MANIFEST") {
		t.Fatalf("open: %v; want the generation and its missing MANIFEST named", err)
	}
	// Put back, nothing was lost.
	if err := os.Rename(filepath.Join(dir, "MANIFEST.away"), filepath.Join(gen, "MANIFEST")); err != nil {
		t.Fatal(err)
	}
	// The same for meta, which holds the cursors and the dead letters.
	metaManifest := filepath.Join(dir, "meta", "MANIFEST")
	if err := os.Rename(metaManifest, metaManifest+".away"); err != nil {
		t.Fatal(err)
	}
	if s, err := Open(Config{Dir: dir, Consumers: []string{"a"}}, nil, prometheus.NewRegistry()); err == nil {
		s.Close(context.Background())
		t.Fatal("opened a spool whose meta lost its MANIFEST")
	} else if !strings.Contains(err.Error(), "meta") || !strings.Contains(err.Error(), "MANIFEST") {
		t.Fatalf("open: %v; want meta and its missing MANIFEST named", err)
	}
	if err := os.Rename(metaManifest+".away", metaManifest); err != nil {
		t.Fatal(err)
	}
	s = openTest(t, dir, "a")
	defer s.Close(context.Background())
	if got := len(readAll(t, s, "a")); got != 50 {
		t.Fatalf("read %d of 50 events once the MANIFEST was back", got)
	}
}

// TestAGenerationThatWillNotOpenIsAnErrorNotAnEnd: a reader that cannot
// open the generation holding its next events must fail, and try again,
// not take it for the end of the spool and skip what it holds.
func TestAGenerationThatWillNotOpenIsAnErrorNotAnEnd(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, dir, "a")
	defer s.Close(context.Background())
	if err := s.Append(t.Context(), events(0, 30), nil); err != nil {
		t.Fatal(err)
	}
	first := rotate(t, s)
	if err := s.Append(t.Context(), events(30, 10), nil); err != nil {
		t.Fatal(err)
	}
	// Out of the recent cache, and closed: the next read opens it.
	s.mu.Lock()
	s.recent, s.recentLen, s.hot = nil, 0, hotBlock{}
	s.mu.Unlock()
	first.closeIfUnused(s.log)
	manifest := filepath.Join(first.dir, "MANIFEST")
	if err := os.Rename(manifest, manifest+".away"); err != nil {
		t.Fatal(err)
	}
	if recs, err := s.Read("a", 100, 1<<20); err == nil {
		t.Fatalf("read %d records past a generation that cannot be opened, without an error", len(recs))
	}
	if err := os.Rename(manifest+".away", manifest); err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, s, "a"); len(got) != 40 || got[0].Seq != 0 {
		t.Fatalf("once it opens again, read %d events from %v; want all 40 from 0", len(got), seqs(got[:min(1, len(got))]))
	}
}

// A disk that stops taking writes must not keep the process from exiting:
// Badger retries a failed memtable flush forever, so Close gives up when
// its context ends, and a restart finds every acknowledged event, as after
// a crash. Both run in child processes, as they would for real: the
// abandoned databases stay open until their process exits, and Badger
// leaves goroutines behind when it replays a crashed generation.
func TestCloseGivesUpOnADiskThatNoLongerTakesWrites(t *testing.T) {
	if dir := os.Getenv("SPOOL_TEST_DIR"); dir != "" {
		var err error
		switch os.Getenv("SPOOL_TEST_CHILD") {
		case "stuck":
			err = closeOnAStuckDisk(dir)
		case "restart":
			err = readAfterRestart(dir)
		}
		if err != nil {
			fmt.Println(err)
			os.Exit(1)
		}
		fmt.Println("child done")
		os.Exit(0)
	}
	dir := t.TempDir()
	child := func(role string) {
		// A Close that never gives up would hang the child: kill it.
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^"+t.Name()+"$")
		cmd.Env = append(os.Environ(), "SPOOL_TEST_DIR="+dir, "SPOOL_TEST_CHILD="+role)
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "child done") {
			t.Fatalf("%s: %v\n%s", role, err, out)
		}
	}
	child("stuck")
	// The disk is repaired: the generations come back.
	moved, err := filepath.Glob(filepath.Join(dir, "moved", "gen-*"))
	if err != nil || len(moved) == 0 {
		t.Fatalf("no moved generation: %v", err)
	}
	for _, g := range moved {
		if err := os.Rename(g, filepath.Join(dir, "spool", filepath.Base(g))); err != nil {
			t.Fatal(err)
		}
	}
	child("restart")
}

// closeOnAStuckDisk acknowledges 10 events, takes the generations'
// directories away so that the active one's memtable can no longer be
// flushed, and closes with a deadline.
func closeOnAStuckDisk(dir string) error {
	s, err := Open(Config{Dir: filepath.Join(dir, "spool"), Consumers: []string{"a"}}, nil, prometheus.NewRegistry())
	if err != nil {
		return err
	}
	if err := s.Append(context.Background(), events(0, 10), nil); err != nil {
		return err
	}
	// Not while the next generation is being created ahead.
	for ready := false; !ready; time.Sleep(time.Millisecond) {
		s.genMu.Lock()
		ready = s.spare != nil
		s.genMu.Unlock()
	}
	gens, err := filepath.Glob(filepath.Join(dir, "spool", "gen-*"))
	if err != nil || len(gens) == 0 {
		return fmt.Errorf("no generation directory: %v", err)
	}
	if err := os.Mkdir(filepath.Join(dir, "moved"), 0o700); err != nil {
		return err
	}
	for _, g := range gens {
		if err := os.Rename(g, filepath.Join(dir, "moved", filepath.Base(g))); err != nil {
			return err
		}
	}
	// A Close that did not give up at its deadline would not return at
	// all: the parent kills the child then.
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := s.Close(ctx); !errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("Close = %v, want an error naming its deadline", err)
	}
	if err := s.Close(context.Background()); !errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("second Close = %v, want the first one's error", err)
	}
	return nil
}

func readAfterRestart(dir string) error {
	s, err := Open(Config{Dir: filepath.Join(dir, "spool"), Consumers: []string{"a"}}, nil, prometheus.NewRegistry())
	if err != nil {
		return err
	}
	got, err := readToEnd(s, "a")
	if err != nil {
		return err
	}
	if err := s.Close(context.Background()); err != nil {
		return err
	}
	if len(got) != 10 {
		return fmt.Errorf("read %d events after the restart, want the 10 acknowledged", len(got))
	}
	return nil
}

// fillUntilDropped appends until the maintenance loop has dropped the
// oldest generation: whenever the spool counts itself full it waits for
// the next measurement, which either drops or finds room (the count of
// bytes written is an estimate until measured), so the loop ends after a
// bounded number of bytes, however fast this machine writes.
func fillUntilDropped(t *testing.T, s *Spool, dropped func() bool, appendSome func()) {
	t.Helper()
	for rounds := 0; !dropped(); rounds++ {
		if rounds > 5000 {
			t.Fatalf("nothing dropped after %d appends into a spool bounded at %d MiB", rounds, s.cfg.MaxBytes>>20)
		}
		appendSome()
		if s.full() {
			testkit.Eventually(t, func() bool { return dropped() || !s.full() }, "a full spool neither dropped nor measured again")
		}
	}
}
