package spool

import (
	"slices"
	"sort"
	"time"

	badger "github.com/dgraph-io/badger/v4"
)

// generationsFrom returns the generations that may hold seq or later.
func (s *Spool) generationsFrom(seq uint64) []*generation {
	s.genMu.Lock()
	defer s.genMu.Unlock()
	i := sort.Search(len(s.gens), func(i int) bool { return s.gens[i].first > seq })
	if i > 0 {
		i--
	}
	return slices.Clone(s.gens[i:])
}

// blockAtOrAfter returns the stored block holding seq, or else the first
// after it, and its generation; false when there is none. A generation
// that cannot be opened is an error, never "nothing there": readers would
// skip its events.
func (s *Spool) blockAtOrAfter(seq uint64) (*generation, blockMeta, bool, error) {
	for _, g := range s.generationsFrom(seq) {
		db, err := g.acquire(s.openFinished)
		if err != nil {
			return nil, blockMeta{}, false, err
		}
		m, ok := findBlock(db, seq)
		g.release()
		if ok {
			return g, m, true, nil
		}
	}
	return nil, blockMeta{}, false, nil
}

func findBlock(db *badger.DB, seq uint64) (m blockMeta, ok bool) {
	_ = db.View(func(txn *badger.Txn) error {
		rit := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{prefixBlock}, Reverse: true})
		rit.Seek(seekBlockKey(seq))
		if rit.Valid() {
			if m, ok = parseBlockKey(rit.Item().Key()); ok && m.end() > seq && m.count > 0 {
				rit.Close()
				return nil
			}
		}
		rit.Close()
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{prefixBlock}})
		defer it.Close()
		it.Seek(blockKey(seq, 0, time.UnixMilli(0)))
		ok = false
		if it.Valid() {
			m, ok = parseBlockKey(it.Item().Key())
		}
		return nil
	})
	return m, ok
}

// recentIndex finds the cached block holding seq; s.mu must be held.
func (s *Spool) recentIndex(seq uint64) int {
	i, found := slices.BinarySearchFunc(s.recent, seq, func(b recentBlock, seq uint64) int {
		switch {
		case b.meta.end() <= seq:
			return -1
		case b.meta.first > seq:
			return 1
		}
		return 0
	})
	if !found {
		return -1
	}
	return i
}
