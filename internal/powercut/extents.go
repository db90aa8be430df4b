package powercut

import (
	"math"
	"slices"
	"sort"
)

// pageSize is the unit of the Harsh mode's partial write-back and of the
// space accounting behind SetCapacity: what a disk with 4 KiB blocks does.
const pageSize = 4096

func pageDown(off int64) int64 { return off &^ (pageSize - 1) }

func pageUp(off int64) int64 {
	if off > math.MaxInt64-pageSize {
		return math.MaxInt64
	}
	return (off + pageSize - 1) &^ (pageSize - 1)
}

// span is the byte range [start, end).
type span struct{ start, end int64 }

func (s span) len() int64 { return s.end - s.start }

// extents is a set of byte ranges, kept sorted, merged and without empty
// spans. The zero value is the empty set.
type extents []span

// add puts [start, end) in the set and reports how many of its bytes were not
// in the set before.
func (x *extents) add(start, end int64) int64 {
	if start >= end {
		return 0
	}
	s := *x
	// Spans that overlap or touch [start, end) merge with it.
	i := sort.Search(len(s), func(k int) bool { return s[k].end >= start })
	j := sort.Search(len(s), func(k int) bool { return s[k].start > end })
	added := end - start
	merged := span{start, end}
	for _, o := range s[i:j] {
		added -= overlap(o, start, end)
		merged.start = min(merged.start, o.start)
		merged.end = max(merged.end, o.end)
	}
	*x = slices.Replace(s, i, j, merged)
	return added
}

// remove takes [start, end) out of the set and reports how many bytes it
// removed.
func (x *extents) remove(start, end int64) int64 {
	if start >= end {
		return 0
	}
	s := *x
	i := sort.Search(len(s), func(k int) bool { return s[k].end > start })
	j := sort.Search(len(s), func(k int) bool { return s[k].start >= end })
	if i >= j {
		return 0
	}
	var removed int64
	for _, o := range s[i:j] {
		removed += overlap(o, start, end)
	}
	var keep []span
	if s[i].start < start {
		keep = append(keep, span{s[i].start, start})
	}
	if s[j-1].end > end {
		keep = append(keep, span{end, s[j-1].end})
	}
	*x = slices.Replace(s, i, j, keep...)
	return removed
}

// truncate removes everything at or beyond off and reports how many bytes it
// removed.
func (x *extents) truncate(off int64) int64 { return x.remove(off, math.MaxInt64) }

// covered reports how many bytes of [start, end) are in the set.
func (x extents) covered(start, end int64) int64 {
	var n int64
	i := sort.Search(len(x), func(k int) bool { return x[k].end > start })
	for ; i < len(x) && x[i].start < end; i++ {
		n += overlap(x[i], start, end)
	}
	return n
}

// size is the number of bytes in the set.
func (x extents) size() int64 {
	var n int64
	for _, s := range x {
		n += s.len()
	}
	return n
}

// intersect returns the part of the set inside [start, end).
func (x extents) intersect(start, end int64) extents {
	var out extents
	i := sort.Search(len(x), func(k int) bool { return x[k].end > start })
	for ; i < len(x) && x[i].start < end; i++ {
		out = append(out, span{max(x[i].start, start), min(x[i].end, end)})
	}
	return out
}

func overlap(s span, start, end int64) int64 {
	return max(0, min(s.end, end)-max(s.start, start))
}
