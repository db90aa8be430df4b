package main

import (
	"strings"
	"testing"
	"time"
)

func TestEventsAtInterpolatesBetweenSamples(t *testing.T) {
	t0 := time.Unix(100, 0)
	ss := []sample{{t: t0, events: 0}, {t: t0.Add(time.Second), events: 1000}, {t: t0.Add(2 * time.Second), events: 1000}}
	for _, tt := range []struct {
		scenario string
		at       time.Time
		want     float64
	}{
		{"before the first sample it is the first count", t0.Add(-time.Second), 0},
		{"halfway between two samples it is halfway", t0.Add(500 * time.Millisecond), 500},
		{"after the last sample it is the last count", t0.Add(time.Hour), 1000},
	} {
		if got, err := eventsAt(ss, tt.at); err != nil || got != tt.want {
			t.Errorf("%s: got %v, %v; want %v", tt.scenario, got, err, tt.want)
		}
	}
	if _, err := eventsAt(nil, t0); err == nil {
		t.Error("no samples: want an error")
	}
}

func TestLineWriterSplitsLinesAcrossWrites(t *testing.T) {
	var got []string
	w := &lineWriter{fn: func(l string) { got = append(got, l) }}
	for _, s := range []string{"progress {\"a\"", ":1}\nhuman li", "ne\n", "partial"} {
		w.Write([]byte(s))
	}
	if strings.Join(got, "|") != `progress {"a":1}|human line` {
		t.Errorf("got %q", got)
	}
}
