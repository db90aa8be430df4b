package powercut

import (
	"slices"
	"testing"
)

func TestExtents(t *testing.T) {
	tests := []struct {
		scenario string
		do       func(x *extents) int64
		want     extents
		wantN    int64
	}{{
		scenario: "adding to the empty set adds every byte",
		do:       func(x *extents) int64 { return x.add(10, 20) },
		want:     extents{{10, 20}},
		wantN:    10,
	}, {
		scenario: "adding a touching range merges it",
		do:       func(x *extents) int64 { x.add(10, 20); return x.add(20, 30) },
		want:     extents{{10, 30}},
		wantN:    10,
	}, {
		scenario: "adding across two ranges counts only the gap",
		do:       func(x *extents) int64 { x.add(0, 10); x.add(20, 30); return x.add(5, 25) },
		want:     extents{{0, 30}},
		wantN:    10,
	}, {
		scenario: "adding an empty range changes nothing",
		do:       func(x *extents) int64 { x.add(0, 10); return x.add(5, 5) },
		want:     extents{{0, 10}},
	}, {
		scenario: "removing the middle splits a range",
		do:       func(x *extents) int64 { x.add(0, 30); return x.remove(10, 20) },
		want:     extents{{0, 10}, {20, 30}},
		wantN:    10,
	}, {
		scenario: "removing across ranges counts what was there",
		do:       func(x *extents) int64 { x.add(0, 10); x.add(20, 30); x.add(40, 50); return x.remove(5, 45) },
		want:     extents{{0, 5}, {45, 50}},
		wantN:    20,
	}, {
		scenario: "truncating drops everything past the offset",
		do:       func(x *extents) int64 { x.add(0, 10); x.add(20, 30); return x.truncate(25) },
		want:     extents{{0, 10}, {20, 25}},
		wantN:    5,
	}, {
		scenario: "covered counts the bytes inside a range",
		do:       func(x *extents) int64 { x.add(0, 10); x.add(20, 30); return x.covered(5, 25) },
		want:     extents{{0, 10}, {20, 30}},
		wantN:    10,
	}}
	for _, tt := range tests {
		t.Run(tt.scenario, func(t *testing.T) {
			var x extents
			if n := tt.do(&x); n != tt.wantN {
				t.Errorf("got %d bytes, want %d", n, tt.wantN)
			}
			if !slices.Equal(x, tt.want) {
				t.Errorf("set is %v, want %v", x, tt.want)
			}
		})
	}
}

func TestPageRounding(t *testing.T) {
	for _, tt := range []struct{ off, down, up int64 }{
		{0, 0, 0}, {1, 0, 4096}, {4095, 0, 4096}, {4096, 4096, 4096}, {4097, 4096, 8192},
	} {
		if got := pageDown(tt.off); got != tt.down {
			t.Errorf("pageDown(%d) = %d, want %d", tt.off, got, tt.down)
		}
		if got := pageUp(tt.off); got != tt.up {
			t.Errorf("pageUp(%d) = %d, want %d", tt.off, got, tt.up)
		}
	}
}
