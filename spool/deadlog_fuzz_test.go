package spool

import (
	"log/slog"
	"os"
	"path/filepath"
	"testing"
)

// sampleSegment is a segment as the store writes it: three frames of dead
// letters.
func sampleSegment() []byte {
	var seg []byte
	id := uint64(0)
	for range 3 {
		dead := make([]DeadLetter, 4)
		for i := range dead {
			dead[i] = DeadLetter{ID: id, Destination: "a", Reason: ReasonRejected, Event: []byte(`{"n":1}`)}
			id++
		}
		for _, b := range sealDeadBlocks(dead) {
			seg = appendDeadFrame(seg, b)
		}
	}
	return seg
}

// FuzzDeadSegment opens a dead-letter store whose segment holds whatever
// a disk may: the open never fails on it, a walk ends, in id order, and
// deleting what the walk listed ends too.
func FuzzDeadSegment(f *testing.F) {
	seg := sampleSegment()
	f.Add(seg, false)
	f.Add(seg, true)
	f.Add(seg[:len(seg)-5], false)
	f.Add(append(append([]byte{}, seg...), seg[:40]...), true)
	f.Fuzz(func(t *testing.T, data []byte, older bool) {
		spoolDir := t.TempDir()
		dir := deadDir(spoolDir)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "00000000000000000000-0"+segmentSuffix), data, 0o600); err != nil {
			t.Fatal(err)
		}
		if older {
			// A newer segment makes this one an older one, whose frames
			// are checked when read.
			newer := sampleSegment()
			if err := os.WriteFile(filepath.Join(dir, "00000000000000000001-0"+segmentSuffix), newer[:len(newer)/3], 0o600); err != nil {
				t.Fatal(err)
			}
		}
		log := slog.New(slog.DiscardHandler)
		l, err := openDeadLog(spoolDir, false, log)
		if err != nil {
			t.Fatalf("open: %v", err)
		}
		defer l.close()
		s := &Spool{dead: l, log: log}
		var ids []uint64
		if _, err := s.walkDead(Filter{}, 0, func(d DeadLetter) error {
			if n := len(ids); n > 0 && d.ID <= ids[n-1] {
				t.Fatalf("walk gave id %d after %d", d.ID, ids[n-1])
			}
			ids = append(ids, d.ID)
			return nil
		}); err != nil {
			t.Fatalf("walk: %v", err)
		}
		if err := l.remove(ids); err != nil {
			t.Fatalf("remove what the walk listed: %v", err)
		}
	})
}
