package spool

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	badger "github.com/dgraph-io/badger/v4"
)

// A lane log holds, per consumer and write key, the events a consumer set
// aside while their key could not be delivered: the consumer's cursor
// moves past them in the shared log, so that other keys keep flowing, and
// they wait here, in the meta store, until their key is delivered again.
// Each entry's key carries the event's sequence number, so a lane reads in
// the order the events were stored, and its storing time, so that lag and
// max_age survive a restart.

// Parked is a lane's content as Lanes finds it on disk.
type Parked struct {
	WriteKey string
	Events   int64
	// FirstSeq is the lowest sequence number parked; Oldest the earliest
	// storing time among them.
	FirstSeq uint64
	Oldest   time.Time
}

func laneConsumerPrefix(consumer string) []byte {
	k := make([]byte, 0, 3+len(consumer))
	k = append(k, prefixLane)
	k = binary.BigEndian.AppendUint16(k, uint16(len(consumer)))
	return append(k, consumer...)
}

func lanePrefix(consumer, writeKey string) []byte {
	k := laneConsumerPrefix(consumer)
	k = binary.BigEndian.AppendUint16(k, uint16(len(writeKey)))
	return append(k, writeKey...)
}

func laneKey(prefix []byte, seq uint64, stored time.Time) []byte {
	k := make([]byte, 0, len(prefix)+16)
	k = append(k, prefix...)
	k = binary.BigEndian.AppendUint64(k, seq)
	return binary.BigEndian.AppendUint64(k, uint64(stored.UnixMilli()))
}

// parseLaneTail reads the write key, seq and storing time from a lane
// entry's key past its consumer prefix.
func parseLaneTail(tail []byte) (writeKey string, seq uint64, stored time.Time, ok bool) {
	if len(tail) < 2 {
		return "", 0, time.Time{}, false
	}
	n := int(binary.BigEndian.Uint16(tail))
	if len(tail) != 2+n+16 {
		return "", 0, time.Time{}, false
	}
	writeKey = string(tail[2 : 2+n])
	seq = binary.BigEndian.Uint64(tail[2+n:])
	stored = time.UnixMilli(int64(binary.BigEndian.Uint64(tail[2+n+8:])))
	return writeKey, seq, stored, true
}

func checkLaneNames(consumer, writeKey string) error {
	if len(consumer) > 0xffff || len(writeKey) > 0xffff {
		return errors.New("spool: consumer or write key too long for a lane")
	}
	return nil
}

// Park stores recs, all of them under writeKey, in consumer's lane for
// that key, and returns how many were not parked already. It returns once
// they are as durable as a block (per --sync): only then may the
// consumer's cursor move past them. Like DeadLetter it works in a full
// spool, since parking lets the shared log be reclaimed. Parking an event
// twice (read again after a restart) keeps one copy.
func (s *Spool) Park(consumer, writeKey string, recs []Record) (int, error) {
	if _, err := s.consumer(consumer); err != nil {
		return 0, err
	}
	if err := checkLaneNames(consumer, writeKey); err != nil {
		return 0, err
	}
	if s.closing.Load() {
		return 0, ErrClosed
	}
	prefix := lanePrefix(consumer, writeKey)
	added := 0
	txn := s.meta.NewTransaction(true)
	defer func() { txn.Discard() }()
	defer s.noteUnsynced()
	for i := range recs {
		if recs[i].WriteKey != writeKey {
			return 0, fmt.Errorf("spool: park: event %d has another write key", recs[i].Seq)
		}
		k := laneKey(prefix, recs[i].Seq, recs[i].Stored)
		_, err := txn.Get(k)
		switch {
		case errors.Is(err, badger.ErrKeyNotFound):
			added++
		case err != nil:
			return 0, s.writeError(fmt.Errorf("park: %w", err))
		default:
			continue
		}
		// Badger keeps the slice until commit: each entry needs its own
		// copy of the data.
		v := append([]byte(nil), recs[i].Data...)
		err = txn.Set(k, v)
		if errors.Is(err, badger.ErrTxnTooBig) {
			if err = txn.Commit(); err == nil {
				txn = s.meta.NewTransaction(true)
				err = txn.Set(k, v)
			}
		}
		if err != nil {
			return 0, s.writeError(fmt.Errorf("park: %w", err))
		}
	}
	if err := txn.Commit(); err != nil {
		return 0, s.writeError(fmt.Errorf("park: %w", err))
	}
	return added, nil
}

// ReadLane appends to recs up to maxEvents parked events of consumer's lane
// for writeKey (and about maxBytes of Data, at least one event when any
// is there), from sequence number from up to, not including, below, in
// order.
func (s *Spool) ReadLane(consumer, writeKey string, from, below uint64, recs []Record, maxEvents, maxBytes int) ([]Record, error) {
	if _, err := s.consumer(consumer); err != nil {
		return recs, err
	}
	if err := checkLaneNames(consumer, writeKey); err != nil {
		return recs, err
	}
	if s.closing.Load() {
		return recs, ErrClosed
	}
	prefix := lanePrefix(consumer, writeKey)
	cprefix := laneConsumerPrefix(consumer)
	err := s.meta.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix, PrefetchValues: true, PrefetchSize: 64})
		defer it.Close()
		n, bytes := 0, 0
		for it.Seek(binary.BigEndian.AppendUint64(append([]byte(nil), prefix...), from)); it.Valid(); it.Next() {
			if n >= maxEvents || (bytes >= maxBytes && n > 0) {
				break
			}
			item := it.Item()
			key, seq, stored, ok := parseLaneTail(item.Key()[len(cprefix):])
			if !ok || key != writeKey {
				continue
			}
			if seq >= below {
				break
			}
			data, err := item.ValueCopy(nil)
			if err != nil {
				return fmt.Errorf("read lane entry %d: %w", seq, err)
			}
			recs = append(recs, Record{Seq: seq, WriteKey: writeKey, Data: data, Stored: stored})
			n++
			bytes += len(data)
		}
		return nil
	})
	return recs, err
}

// Unpark removes recs, read with ReadLane, from consumer's lane: they are
// delivered or dead-lettered.
func (s *Spool) Unpark(consumer, writeKey string, recs []Record) error {
	if _, err := s.consumer(consumer); err != nil {
		return err
	}
	if err := checkLaneNames(consumer, writeKey); err != nil {
		return err
	}
	if s.closing.Load() {
		return ErrClosed
	}
	prefix := lanePrefix(consumer, writeKey)
	txn := s.meta.NewTransaction(true)
	defer func() { txn.Discard() }()
	defer s.noteUnsynced()
	for i := range recs {
		k := laneKey(prefix, recs[i].Seq, recs[i].Stored)
		err := txn.Delete(k)
		if errors.Is(err, badger.ErrTxnTooBig) {
			if err = txn.Commit(); err == nil {
				txn = s.meta.NewTransaction(true)
				err = txn.Delete(k)
			}
		}
		if err != nil {
			return s.writeError(fmt.Errorf("unpark: %w", err))
		}
	}
	if err := txn.Commit(); err != nil {
		return s.writeError(fmt.Errorf("unpark: %w", err))
	}
	return nil
}

// Lanes lists consumer's lanes that hold parked events, reading keys only.
func (s *Spool) Lanes(consumer string) ([]Parked, error) {
	if _, err := s.consumer(consumer); err != nil {
		return nil, err
	}
	cprefix := laneConsumerPrefix(consumer)
	var out []Parked
	err := s.meta.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: cprefix})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			key, seq, stored, ok := parseLaneTail(it.Item().Key()[len(cprefix):])
			if !ok {
				continue
			}
			if n := len(out); n == 0 || out[n-1].WriteKey != key {
				out = append(out, Parked{WriteKey: key, FirstSeq: seq, Oldest: stored})
			}
			p := &out[len(out)-1]
			p.Events++
			if stored.Before(p.Oldest) {
				p.Oldest = stored
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list lanes: %w", err)
	}
	return out, nil
}
