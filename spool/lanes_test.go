package spool

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"
)

// A lane keeps parked events in order across a close and reopen, per
// consumer and write key, once each however often they are parked, and
// gives them back with the time they were first stored.
func TestParkedEventsSurviveAReopenInOrderOncePerLane(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, dir, "a", "b")
	stored := time.UnixMilli(time.Now().Add(-time.Hour).UnixMilli())
	park := func(consumer, key string, seqs ...uint64) int {
		t.Helper()
		recs := make([]Record, len(seqs))
		for i, seq := range seqs {
			recs[i] = Record{Seq: seq, WriteKey: key, Data: fmt.Appendf(nil, `{"n":%d}`, seq), Stored: stored}
		}
		n, err := s.Park(consumer, key, recs)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := park("a", "k1", 7, 3, 5); n != 3 {
		t.Errorf("parked %d new, want 3", n)
	}
	if n := park("a", "k1", 5, 9); n != 1 {
		t.Errorf("parked %d new of one already parked and one new, want 1", n)
	}
	park("a", "k2", 4)
	park("b", "k1", 1)
	if _, err := s.Park("a", "k1", []Record{{Seq: 10, WriteKey: "other"}}); err == nil {
		t.Error("parked an event under another key's lane")
	}
	if _, err := s.Park("nobody", "k1", nil); err == nil {
		t.Error("parked for an unknown consumer")
	}
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}

	s = openTest(t, dir, "a", "b")
	defer s.Close(context.Background())
	lanes, err := s.Lanes("a")
	if err != nil {
		t.Fatal(err)
	}
	want := []Parked{{WriteKey: "k1", Events: 4, FirstSeq: 3, Oldest: stored}, {WriteKey: "k2", Events: 1, FirstSeq: 4, Oldest: stored}}
	if !slices.EqualFunc(lanes, want, func(a, b Parked) bool {
		return a.WriteKey == b.WriteKey && a.Events == b.Events && a.FirstSeq == b.FirstSeq && a.Oldest.Equal(b.Oldest)
	}) {
		t.Errorf("lanes of a = %+v, want %+v", lanes, want)
	}
	seqs := func(recs []Record) []uint64 {
		var out []uint64
		for _, r := range recs {
			out = append(out, r.Seq)
			if string(r.Data) != fmt.Sprintf(`{"n":%d}`, r.Seq) || !r.Stored.Equal(stored) || r.WriteKey != "k1" {
				t.Errorf("record %+v", r)
			}
		}
		return out
	}
	recs, err := s.ReadLane("a", "k1", 0, 100, nil, 2, 1<<20)
	if err != nil || !slices.Equal(seqs(recs), []uint64{3, 5}) {
		t.Fatalf("first two of a/k1 = %v, %v", seqs(recs), err)
	}
	if recs, _ := s.ReadLane("a", "k1", 4, 9, nil, 10, 1<<20); !slices.Equal(seqs(recs), []uint64{5, 7}) {
		t.Errorf("a/k1 in [4, 9) = %v, want [5 7]", seqs(recs))
	}
	if err := s.Unpark("a", "k1", recs); err != nil {
		t.Fatal(err)
	}
	if recs, _ := s.ReadLane("a", "k1", 0, 100, nil, 10, 1<<20); !slices.Equal(seqs(recs), []uint64{7, 9}) {
		t.Errorf("a/k1 after unparking 3 and 5 = %v, want [7 9]", seqs(recs))
	}
	if recs, _ := s.ReadLane("b", "k1", 0, 100, nil, 10, 1<<20); !slices.Equal(seqs(recs), []uint64{1}) {
		t.Errorf("b/k1 = %v, want [1]: lanes are per consumer", seqs(recs))
	}
}
