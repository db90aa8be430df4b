package main

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestBitsetFindsWhatIsMissing(t *testing.T) {
	var acked, delivered, dead bitset
	acked.addRange(0, 200)
	acked.addRange(1000, 3)
	delivered.addRange(0, 150)
	dead.add([]uint64{150, 151, 1001})
	if dups := delivered.add([]uint64{3, 4, 5000}); dups != 2 {
		t.Errorf("adding two present numbers: %d duplicates, want 2", dups)
	}
	n, ex := missing(&acked, []*bitset{&delivered, &dead}, 0, 3)
	if n != 48+2 || !slices.Equal(ex, []uint64{152, 153, 154}) {
		t.Errorf("missing: %d %v; want 50 [152 153 154]", n, ex)
	}
	if n, ex := missing(&acked, []*bitset{&delivered, &dead}, 190, 3); n != 10+2 || !slices.Equal(ex, []uint64{190, 191, 192}) {
		t.Errorf("missing from 190: %d %v; want 12 [190 191 192]", n, ex)
	}
	if n, _ := missing(&acked, []*bitset{&delivered, &dead}, 1001, 3); n != 1 {
		t.Errorf("missing from 1001: %d, want 1 (1002)", n)
	}
	if got := intersect(&acked, &delivered); got != 150 {
		t.Errorf("intersect: %d, want 150", got)
	}
	if acked.count() != 203 || !acked.has(1002) || acked.has(1003) {
		t.Errorf("count %d, has(1002) %v, has(1003) %v", acked.count(), acked.has(1002), acked.has(1003))
	}
}

func TestWriteBatchIsJSONAndItsIDsParseBack(t *testing.T) {
	var b bytes.Buffer
	poison := make([]bool, 40)
	poison[7], poison[39] = true, true
	writeBatch(&b, rand.New(rand.NewPCG(1, 2)), 1000, poison)
	var body struct {
		Batch []map[string]any `json:"batch"`
	}
	if err := json.Unmarshal(b.Bytes(), &body); err != nil {
		t.Fatalf("not JSON: %v", err)
	}
	if len(body.Batch) != 40 || body.Batch[7]["messageId"] != "chaos-1007-poison" ||
		body.Batch[7]["properties"].(map[string]any)["poison"] != true || body.Batch[8]["messageId"] != "chaos-1008" {
		t.Fatalf("unexpected events: %d, %v, %v", len(body.Batch), body.Batch[7], body.Batch[8]["messageId"])
	}
	var ids, poisoned []uint64
	unknown := parseIDs(b.Bytes(), func(n uint64, p bool) {
		ids = append(ids, n)
		if p {
			poisoned = append(poisoned, n)
		}
	})
	if unknown != 0 || len(ids) != 40 || ids[0] != 1000 || ids[39] != 1039 || !slices.Equal(poisoned, []uint64{1007, 1039}) {
		t.Errorf("parsed %d ids (%v...), poison %v, %d unknown", len(ids), ids[:2], poisoned, unknown)
	}
}

func TestParseIDsReadsSpacedKeysAndCountsForeignOnes(t *testing.T) {
	body := `[{"messageId" : "chaos-5"},{"messageId":"abc"},{"messageId":"chaos-x"},{"messageId":"chaos-6-other"},{"x":1}]`
	var ids []uint64
	unknown := parseIDs([]byte(body), func(n uint64, _ bool) { ids = append(ids, n) })
	if !slices.Equal(ids, []uint64{5}) || unknown != 3 {
		t.Errorf("ids %v, unknown %d; want [5], 3", ids, unknown)
	}
}

func TestMetricsSumMatchesNameAndLabels(t *testing.T) {
	m := metrics{
		`spillway_events_dropped_total{destination="flap",reason="spool_full"}`:    7,
		`spillway_events_dropped_total{destination="healthy",reason="spool_full"}`: 1,
		`spillway_events_dropped_total_extra{destination="flap"}`:                  100,
		`go_goroutines`: 42,
	}
	for _, tt := range []struct {
		scenario string
		got      float64
		want     float64
	}{
		{"a label picks one destination", m.dest("spillway_events_dropped_total", "flap"), 7},
		{"no label sums every series of the name, not of a longer name", m.sum("spillway_events_dropped_total"), 8},
		{"a series without labels", m.sum("go_goroutines"), 42},
		{"a metric that is not there", m.sum("spillway_nothing"), -1},
	} {
		if tt.got != tt.want {
			t.Errorf("%s: %v, want %v", tt.scenario, tt.got, tt.want)
		}
	}
}

func TestFlappingSinkRefusesPoisonAndListensAgain(t *testing.T) {
	s, err := newSink("flap", true)
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	post := func(body string) int {
		resp, err := http.Post(s.url(), "application/json", strings.NewReader(body))
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := post(`[{"messageId":"chaos-1"},{"messageId":"chaos-2-poison"}]`); code != 400 {
		t.Errorf("a batch holding poison: %d, want 400", code)
	}
	if code := post(`[{"messageId":"chaos-1"}]`); code != 200 || !s.delivered.has(1) || s.delivered.has(2) {
		t.Errorf("a clean batch: %d; delivered 1 %v, 2 %v", code, s.delivered.has(1), s.delivered.has(2))
	}
	if err := s.setMode(refusing); err != nil {
		t.Fatal(err)
	}
	if code := post(`[{"messageId":"chaos-3"}]`); code != 0 {
		t.Errorf("refusing: answered %d", code)
	}
	if err := s.setMode(failing); err != nil {
		t.Fatal(err)
	}
	if code := post(`[{"messageId":"chaos-3"}]`); code != 503 || s.delivered.has(3) {
		t.Errorf("failing: %d, delivered %v", code, s.delivered.has(3))
	}
}

func TestFlapScheduleFollowsItsSeed(t *testing.T) {
	draw := func(seed uint64) []string {
		f := &flapper{rng: rand.New(rand.NewPCG(seed, 1))}
		var out []string
		for range 20 {
			m, d := f.pick()
			if d < 2*time.Second || d > 12*time.Second {
				t.Errorf("phase of %v, outside 2-12 s", d)
			}
			out = append(out, m.String())
		}
		return out
	}
	if a, b := draw(7), draw(7); !slices.Equal(a, b) {
		t.Errorf("the same seed gave %v and %v", a, b)
	}
	if a, b := draw(7), draw(8); slices.Equal(a, b) {
		t.Errorf("two seeds gave the same schedule %v", a)
	}
}

func TestPaceHoldsTheRateWithoutBursting(t *testing.T) {
	l := &load{}
	l.setRate(1000) // events/s
	t0 := time.Now()
	var last time.Time
	for range 10 {
		last = l.pace(100)
	}
	// Ten requests of 100 events at 1000 events/s: the last is due 0.9 s
	// after the first, which may be up to 200 ms in the past.
	if d := last.Sub(t0); d < 600*time.Millisecond || d > time.Second {
		t.Errorf("the tenth request due %v after the start, want about 0.9 s (less up to 0.2 s)", d)
	}
}

func TestNextSeqReadsTheSpoolOpenLine(t *testing.T) {
	dir := t.TempDir()
	log := dir + "/run.log"
	body := "time=x level=INFO msg=\"spillway starting\"\n" +
		"time=x level=INFO msg=\"spool open\" component=spool dir=/m/spool sync=always generations=2 next_seq=741552\n"
	if err := os.WriteFile(log, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := nextSeq(log); got != 741552 {
		t.Errorf("next_seq %d, want 741552", got)
	}
	if got := nextSeq(dir + "/missing.log"); got != -1 {
		t.Errorf("no log: %d, want -1", got)
	}
}
