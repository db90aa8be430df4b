package main

import (
	"math/bits"
	"sync"
)

// bitset is a set of event numbers (the N of a messageId chaos-N), safe for
// concurrent use. Numbers are handed out from 0 upwards, so a soak of a few
// hundred million events fits in a few tens of MiB per set.
type bitset struct {
	mu    sync.Mutex
	words []uint64
}

// addRange adds every number in [from, from+n).
func (b *bitset) addRange(from, n uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for i := from; i < from+n; i++ {
		b.setLocked(i)
	}
}

// add adds each of ns and returns how many were already there.
func (b *bitset) add(ns []uint64) (dups int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, n := range ns {
		if b.hasLocked(n) {
			dups++
		}
		b.setLocked(n)
	}
	return dups
}

func (b *bitset) setLocked(n uint64) {
	w := n / 64
	if w >= uint64(len(b.words)) {
		grown := make([]uint64, max(w+1, uint64(len(b.words))*2, 1024))
		copy(grown, b.words)
		b.words = grown
	}
	b.words[w] |= 1 << (n % 64)
}

func (b *bitset) hasLocked(n uint64) bool {
	w := n / 64
	return w < uint64(len(b.words)) && b.words[w]&(1<<(n%64)) != 0
}

func (b *bitset) has(n uint64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.hasLocked(n)
}

func (b *bitset) count() uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	var c uint64
	for _, w := range b.words {
		c += uint64(bits.OnesCount64(w))
	}
	return c
}

// missing returns how many numbers of want, from from upwards, are in none
// of have, and up to keep of them in increasing order, for the report.
func missing(want *bitset, have []*bitset, from uint64, keep int) (n uint64, examples []uint64) {
	want.mu.Lock()
	defer want.mu.Unlock()
	for _, h := range have {
		h.mu.Lock()
		defer h.mu.Unlock()
	}
	for i, w := range want.words {
		if end := uint64(i+1) * 64; end <= from {
			continue
		} else if start := uint64(i) * 64; start < from {
			w &^= 1<<(from-start) - 1
		}
		for _, h := range have {
			if i < len(h.words) {
				w &^= h.words[i]
			}
		}
		if w == 0 {
			continue
		}
		n += uint64(bits.OnesCount64(w))
		for w != 0 && len(examples) < keep {
			j := bits.TrailingZeros64(w)
			examples = append(examples, uint64(i)*64+uint64(j))
			w &= w - 1
		}
	}
	return n, examples
}

// intersect counts the numbers in both a and b.
func intersect(a, b *bitset) uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	b.mu.Lock()
	defer b.mu.Unlock()
	var c uint64
	for i := range min(len(a.words), len(b.words)) {
		c += uint64(bits.OnesCount64(a.words[i] & b.words[i]))
	}
	return c
}
