package spool

import (
	"errors"
	"io/fs"
	"path/filepath"
	"time"

	badger "github.com/dgraph-io/badger/v4"
)

const (
	maintenanceEvery = time.Second
	valueLogGCEvery  = time.Minute
)

// maintenanceLoop reclaims delivered blocks, keeps the size accounting
// that --spool-max-bytes needs, and runs value-log GC.
func (s *Spool) maintenanceLoop() {
	tick := time.NewTicker(maintenanceEvery)
	defer tick.Stop()
	lastGC := time.Now()
	for {
		select {
		case <-s.quit:
			return
		case <-tick.C:
		}
		if err := s.reclaim(); err != nil {
			s.log.Warn("reclaim delivered blocks", "err", err)
		}
		if time.Since(lastGC) >= valueLogGCEvery {
			s.valueLogGC()
			lastGC = time.Now()
		}
		s.refreshSize()
	}
}

// minCursor is the lowest cursor over the configured consumers: every
// event below it is done for all of them.
func (s *Spool) minCursor() uint64 {
	s.mu.Lock()
	low := s.next
	s.mu.Unlock()
	for _, c := range s.consumers {
		low = min(low, c.cursor.Load())
	}
	return low
}

// reclaim deletes blocks that every consumer has passed.
func (s *Spool) reclaim() error {
	low := s.minCursor()
	var keys [][]byte
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{prefixBlock}})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			m, ok := parseBlockKey(it.Item().Key())
			if !ok || m.end() > low {
				break
			}
			keys = append(keys, it.Item().KeyCopy(nil))
		}
		return nil
	})
	if err != nil || len(keys) == 0 {
		return err
	}
	wb := s.db.NewWriteBatch()
	defer wb.Cancel()
	for _, k := range keys {
		if err := wb.Delete(k); err != nil {
			return err
		}
	}
	if err := wb.Flush(); err != nil {
		return err
	}
	s.metrics.blocks.Sub(float64(len(keys)))
	s.mu.Lock()
	for len(s.recent) > 0 && s.recent[0].first+uint64(len(s.recent[0].recs)) <= low {
		s.recentLen -= s.recent[0].bytes
		s.recent[0] = nil
		s.recent = s.recent[1:]
	}
	s.mu.Unlock()
	return nil
}

func (s *Spool) valueLogGC() {
	for {
		err := s.db.RunValueLogGC(0.5)
		if err == nil {
			continue
		}
		if !errors.Is(err, badger.ErrNoRewrite) && !errors.Is(err, badger.ErrRejected) {
			s.log.Warn("value log gc", "err", err)
		}
		return
	}
}

// refreshSize measures the spool directory and flips the full flag that
// Append and Ready consult.
func (s *Spool) refreshSize() {
	var total int64
	_ = filepath.WalkDir(s.cfg.Dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		if info, err := d.Info(); err == nil {
			total += info.Size()
		}
		return nil
	})
	s.metrics.bytes.Set(float64(total))
	full := s.cfg.MaxBytes > 0 && total >= s.cfg.MaxBytes
	if full != s.full.Swap(full) {
		if full {
			s.log.Warn("spool full: refusing new events", "bytes", total, "max_bytes", s.cfg.MaxBytes)
		} else {
			s.log.Info("spool has room again", "bytes", total, "max_bytes", s.cfg.MaxBytes)
		}
	}
}

// syncLoop makes SyncInterval writes durable in the background.
func (s *Spool) syncLoop() {
	tick := time.NewTicker(s.cfg.SyncInterval)
	defer tick.Stop()
	for {
		select {
		case <-s.quit:
			return
		case <-tick.C:
			start := time.Now()
			if err := s.db.Sync(); err != nil {
				s.log.Error("background fsync", "err", err)
				continue
			}
			s.metrics.fsync.Observe(time.Since(start).Seconds())
		}
	}
}

func (s *Spool) countKeys(prefix byte) int {
	n := 0
	_ = s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{prefix}})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			n++
		}
		return nil
	})
	return n
}
