package spool

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"syscall"
	"testing"
)

// runDedupeCrashChild appends batches of events with messageIds, each
// batch sent twice, printing "acked N" once the ids below N are durable,
// and moves to a new generation every few batches, so that keys are in
// runs as well as in the active generation's log. It runs until killed.
func runDedupeCrashChild(dir string) int {
	s, err := Open(Config{Dir: dir, Consumers: []string{"a"}, DedupeWindow: DefaultDedupeWindow}, nil, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, "child: open:", err)
		return 3
	}
	const perBatch = 20
	for i := range 5000 {
		batch := withIDs(i*perBatch, perBatch)
		for range 2 {
			if _, err := s.AppendFrom(context.Background(), SourceHTTP, batch, nil); err != nil {
				fmt.Fprintln(os.Stderr, "child: append:", err)
				return 3
			}
		}
		fmt.Printf("acked %d\n", (i+1)*perBatch)
		if i%4 == 3 {
			select {
			case s.rotate <- struct{}{}:
			default:
			}
		}
	}
	_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	return 0
}

// After kill -9 at a random moment: every acknowledged event's key is in
// the index, and every key in the index is of an event that was stored.
func TestKillNineLeavesTheIndexAndTheEventsConsistent(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(25, 25))
	for cycle := range 6 {
		dir := t.TempDir()
		cmd, sc := startCrashChild(t, dir, "dedupe")
		killAfter := 1 + rng.IntN(60)
		acked := 0
		for sc.Scan() {
			if _, err := fmt.Sscanf(sc.Text(), "acked %d", &acked); err == nil && acked/20 >= killAfter {
				break
			}
		}
		_ = cmd.Process.Signal(syscall.SIGKILL)
		for sc.Scan() { // what it acknowledged before the signal landed
			if strings.HasPrefix(sc.Text(), "acked ") {
				fmt.Sscanf(sc.Text(), "acked %d", &acked)
			}
		}
		_ = cmd.Wait()
		if acked == 0 {
			t.Fatalf("cycle %d: the child acknowledged nothing", cycle)
		}

		s := openDedupeTest(t, dir, nil, 0)
		stored := map[string]bool{}
		for _, r := range readAll(t, s.Spool, "a") {
			stored[string(r.Data)] = true
		}
		s.dedupe.mu.Lock()
		for i := range acked + 200 {
			data := fmt.Sprintf(`{"n":%d}`, i)
			indexed := s.dedupe.stored(dedupeKey("wk", fmt.Appendf(nil, "id-%d", i)), 0)
			if i < acked && !indexed {
				t.Errorf("cycle %d: acknowledged event %d has no index entry (%d acknowledged)", cycle, i, acked)
			}
			if indexed && !stored[data] {
				t.Errorf("cycle %d: index entry for event %d, which is not stored", cycle, i)
			}
		}
		s.dedupe.mu.Unlock()
		if err := s.Close(t.Context()); err != nil {
			t.Fatal(err)
		}
		if t.Failed() {
			return
		}
	}
}
