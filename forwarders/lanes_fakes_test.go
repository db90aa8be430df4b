package forwarders

import (
	"slices"

	"github.com/spillwayhq/spillway/spool"
)

var _ laneStore = (*memStore)(nil)

// memLaneEntry is a parked event of memStore's lane log.
type memLaneEntry struct {
	consumer string
	rec      spool.Record
}

func (m *memStore) Park(consumer, writeKey string, recs []spool.Record) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, err := m.consumer(consumer); err != nil {
		return 0, err
	}
	added := 0
	for _, r := range recs {
		if slices.ContainsFunc(m.parked, func(e memLaneEntry) bool { return e.consumer == consumer && e.rec.Seq == r.Seq }) {
			continue
		}
		r.Data = append([]byte(nil), r.Data...)
		m.parked = append(m.parked, memLaneEntry{consumer: consumer, rec: r})
		added++
	}
	slices.SortFunc(m.parked, func(a, b memLaneEntry) int {
		switch {
		case a.rec.Seq < b.rec.Seq:
			return -1
		case a.rec.Seq > b.rec.Seq:
			return 1
		}
		return 0
	})
	return added, nil
}

func (m *memStore) ReadLane(consumer, writeKey string, from, below uint64, recs []spool.Record, maxEvents, maxBytes int) ([]spool.Record, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	n, bytes := 0, 0
	for _, e := range m.parked {
		if e.consumer != consumer || e.rec.WriteKey != writeKey || e.rec.Seq < from {
			continue
		}
		if e.rec.Seq >= below || n >= maxEvents || (bytes >= maxBytes && n > 0) {
			break
		}
		r := e.rec
		r.Data = append([]byte(nil), r.Data...)
		recs = append(recs, r)
		n++
		bytes += len(r.Data)
	}
	return recs, nil
}

func (m *memStore) Unpark(consumer, writeKey string, recs []spool.Record) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.parked = slices.DeleteFunc(m.parked, func(e memLaneEntry) bool {
		return e.consumer == consumer && slices.ContainsFunc(recs, func(r spool.Record) bool { return r.Seq == e.rec.Seq })
	})
	return nil
}

func (m *memStore) Lanes(consumer string) ([]spool.Parked, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []spool.Parked
	for _, e := range m.parked {
		if e.consumer != consumer {
			continue
		}
		i := slices.IndexFunc(out, func(p spool.Parked) bool { return p.WriteKey == e.rec.WriteKey })
		if i < 0 {
			out = append(out, spool.Parked{WriteKey: e.rec.WriteKey, FirstSeq: e.rec.Seq, Oldest: e.rec.Stored})
			i = len(out) - 1
		}
		out[i].Events++
	}
	return out, nil
}

// parkedCount is how many events memStore's lane log holds.
func (m *memStore) parkedCount() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.parked)
}
