package main

import (
	"encoding/json"
	"math/rand/v2"
	"slices"
	"testing"
)

func TestPooledBodiesAreValidSegmentBatchesOfRealisticSize(t *testing.T) {
	pool := buildPool(7, 20, 100)
	var raw, events int
	for i := range pool {
		bd := &pool[i]
		patchCounters(bd.data, bd.counters, uint64(i)*100+123456789)
		var b struct {
			Batch []struct {
				Type, MessageID, AnonymousID string
				Properties                   map[string]any
				Context                      map[string]any
			}
			SentAt string
		}
		if err := json.Unmarshal(bd.data, &b); err != nil {
			t.Fatalf("body %d: %v", i, err)
		}
		if len(b.Batch) != 100 || bd.events != 100 || len(bd.counters) != 100 {
			t.Fatalf("body %d: %d events, %d counters", i, len(b.Batch), len(bd.counters))
		}
		for _, e := range b.Batch {
			if e.Type != "track" || e.MessageID == "" || e.AnonymousID == "" || e.Properties["price"] == nil || e.Context["userAgent"] == nil {
				t.Fatalf("body %d: incomplete event %+v", i, e)
			}
		}
		raw += bd.rawBytes
		events += bd.events
	}
	if avg := raw / events; avg < 650 || avg > 850 {
		t.Errorf("events average %d bytes, want about 750", avg)
	}
}

func TestMessageIDsStayUniqueWhenABodyIsResent(t *testing.T) {
	pool := buildPool(1, 3, 50)
	seen := map[string]bool{}
	for n := uint64(0); n < 9; n++ {
		bd := &pool[n%3]
		patchCounters(bd.data, bd.counters, n*50)
		var b struct{ Batch []struct{ MessageID string } }
		if err := json.Unmarshal(bd.data, &b); err != nil {
			t.Fatal(err)
		}
		for _, e := range b.Batch {
			if seen[e.MessageID] {
				t.Fatalf("request %d repeats messageId %s", n, e.MessageID)
			}
			seen[e.MessageID] = true
		}
	}
}

func TestTrackBodiesAreOneBareEvent(t *testing.T) {
	pool := buildPool(3, 5, 0)
	for _, bd := range pool {
		var e map[string]any
		if err := json.Unmarshal(bd.data, &e); err != nil {
			t.Fatal(err)
		}
		if e["type"] != "track" || bd.events != 1 || bd.rawBytes != len(bd.data) {
			t.Fatalf("bad track body %s", bd.data)
		}
	}
}

func TestHistogramQuantilesAreWithinTwoPercent(t *testing.T) {
	var h hist
	r := rand.New(rand.NewPCG(1, 2))
	vals := make([]uint64, 0, 100000)
	for range 100000 {
		v := uint64(r.ExpFloat64() * 5000)
		vals = append(vals, v)
		h.record(v)
	}
	for _, v := range []uint64{0, 1, 127, 128, 129, 1000, 1 << 20, 123456789} {
		if u := histUpper(histIndex(v)); u < v || float64(u-v) > 0.02*float64(v)+1 {
			t.Errorf("value %d lands in a bucket ending at %d", v, u)
		}
	}
	slices.Sort(vals)
	for _, q := range []float64{0.5, 0.9, 0.99} {
		exact := vals[int(q*float64(len(vals)))-1]
		got := h.quantile(q)
		if float64(got) < float64(exact)*0.98-1 || float64(got) > float64(exact)*1.02+1 {
			t.Errorf("q%.2f: got %d, exact %d", q, got, exact)
		}
	}
}
