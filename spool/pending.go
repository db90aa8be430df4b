package spool

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"

	badger "github.com/dgraph-io/badger/v4"
)

// prefixPending is 'p' | consumer name -> Pending (17 bytes: first (8),
// last (8), confirmed (1)). Meta store, beside the consumer's cursor.
const prefixPending = 'p'

func pendingKey(consumer string) []byte { return append([]byte{prefixPending}, consumer...) }

// Pending is the unit of delivery a consumer decided on last: the events
// with sequence numbers First..Last inclusive. A consumer whose
// destination must see each event in exactly one unit (an object named by
// its range) records the range before sending it and marks it Confirmed
// once the destination took it. After a restart it sends an unconfirmed
// range again with the same bounds, and starts the next unit after a
// confirmed one, whatever its cursor, which is saved lazily, says.
type Pending struct {
	First, Last uint64
	Confirmed   bool
}

// SetPending records consumer's unit durably: it returns once the record
// is fsynced, whatever --sync is, since the destination is written to
// next on its word.
func (s *Spool) SetPending(consumer string, p Pending) error {
	if _, err := s.consumer(consumer); err != nil {
		return err
	}
	if s.closing.Load() {
		return ErrClosed
	}
	if p.Last < p.First {
		return fmt.Errorf("spool: pending range %d..%d is empty", p.First, p.Last)
	}
	v := binary.BigEndian.AppendUint64(nil, p.First)
	v = binary.BigEndian.AppendUint64(v, p.Last)
	if p.Confirmed {
		v = append(v, 1)
	} else {
		v = append(v, 0)
	}
	if err := s.meta.Update(func(txn *badger.Txn) error { return txn.Set(pendingKey(consumer), v) }); err != nil {
		return fmt.Errorf("save pending range: %w", err)
	}
	if s.cfg.Sync != SyncAlways {
		if err := s.meta.Sync(); err != nil {
			return fmt.Errorf("sync pending range: %w", err)
		}
	}
	return nil
}

// PendingRange returns consumer's last recorded unit; ok is false when it
// never recorded one.
func (s *Spool) PendingRange(consumer string) (p Pending, ok bool, err error) {
	if _, err := s.consumer(consumer); err != nil {
		return Pending{}, false, err
	}
	err = s.meta.View(func(txn *badger.Txn) error {
		item, err := txn.Get(pendingKey(consumer))
		if err != nil {
			return err
		}
		return item.Value(func(v []byte) error {
			if len(v) != 17 {
				return fmt.Errorf("pending range of %s: %d bytes, want 17", consumer, len(v))
			}
			p = Pending{First: binary.BigEndian.Uint64(v), Last: binary.BigEndian.Uint64(v[8:]), Confirmed: v[16] == 1}
			return nil
		})
	})
	switch {
	case errors.Is(err, badger.ErrKeyNotFound):
		return Pending{}, false, nil
	case err != nil:
		return Pending{}, false, fmt.Errorf("read pending range: %w", err)
	}
	return p, true, nil
}

// ScratchFile returns a new empty file in the spool's directory, already
// unlinked, for a consumer to build a unit of delivery in that is too big
// to hold in memory (an archive's object of tens of MiB). Unlinked, it
// leaves nothing behind after a crash; its space returns when it is
// closed.
func (s *Spool) ScratchFile() (*os.File, error) {
	f, err := os.CreateTemp(s.cfg.Dir, "scratch-*"+tmpSuffix)
	if err != nil {
		return nil, fmt.Errorf("spool: create scratch file: %w", err)
	}
	if err := os.Remove(f.Name()); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("spool: unlink scratch file: %w", err)
	}
	return f, nil
}
