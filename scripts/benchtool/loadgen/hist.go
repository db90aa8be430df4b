package main

import "math/bits"

// hist is a log-linear latency histogram in microseconds: exact below 128 µs,
// then 64 buckets per power of two (at most 1.6 % error), like HdrHistogram
// with two significant digits. The zero value is ready to use.
type hist struct {
	counts [128 + 40*64]uint64
	n      uint64
	max    uint64
}

const histSubBits = 6

func histIndex(v uint64) int {
	if v < 2<<histSubBits {
		return int(v)
	}
	e := bits.Len64(v) - histSubBits - 1 // v>>e is in [64, 127]
	i := (2 << histSubBits) + (e-1)<<histSubBits + int(v>>e) - 1<<histSubBits
	if i >= len(hist{}.counts) {
		i = len(hist{}.counts) - 1
	}
	return i
}

// histUpper is the largest value that falls in bucket i.
func histUpper(i int) uint64 {
	if i < 2<<histSubBits {
		return uint64(i)
	}
	j := i - 2<<histSubBits
	e := j>>histSubBits + 1
	m := uint64(j&(1<<histSubBits-1)) + 1<<histSubBits
	return (m+1)<<e - 1
}

func (h *hist) record(us uint64) {
	h.counts[histIndex(us)]++
	h.n++
	if us > h.max {
		h.max = us
	}
}

func (h *hist) merge(o *hist) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.max = max(h.max, o.max)
}

// quantile returns the value at quantile q in (0, 1], in microseconds.
func (h *hist) quantile(q float64) uint64 {
	if h.n == 0 {
		return 0
	}
	rank := uint64(q*float64(h.n) + 0.5)
	rank = max(rank, 1)
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			return min(histUpper(i), h.max)
		}
	}
	return h.max
}
