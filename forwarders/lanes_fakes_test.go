package forwarders

import (
	"cmp"
	"slices"

	"github.com/spillwayhq/spillway/spool"
)

var _ laneStore = (*memStore)(nil)

// memLane is one lane of memStore's lane log.
type memLane struct {
	consumer, key string
}

func (m *memStore) Park(consumer, writeKey string, recs []spool.Record) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, err := m.consumer(consumer); err != nil {
		return 0, err
	}
	if m.parked == nil {
		m.parked = map[memLane][]spool.Record{}
	}
	lane := memLane{consumer, writeKey}
	log := m.parked[lane]
	added := 0
	for _, r := range recs {
		i, found := slices.BinarySearchFunc(log, r.Seq, func(e spool.Record, seq uint64) int { return cmp.Compare(e.Seq, seq) })
		if found {
			continue
		}
		r.Data = append([]byte(nil), r.Data...)
		log = slices.Insert(log, i, r)
		added++
	}
	m.parked[lane] = log
	return added, nil
}

func (m *memStore) ReadLane(consumer, writeKey string, from, below uint64, recs []spool.Record, maxEvents, maxBytes int) ([]spool.Record, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	n, bytes := 0, 0
	for _, r := range m.parked[memLane{consumer, writeKey}] {
		if r.Seq < from {
			continue
		}
		if r.Seq >= below || n >= maxEvents || (bytes >= maxBytes && n > 0) {
			break
		}
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
	lane := memLane{consumer, writeKey}
	log := slices.DeleteFunc(m.parked[lane], func(e spool.Record) bool {
		return slices.ContainsFunc(recs, func(r spool.Record) bool { return r.Seq == e.Seq })
	})
	if len(log) == 0 {
		delete(m.parked, lane)
	} else {
		m.parked[lane] = log
	}
	return nil
}

func (m *memStore) Lanes(consumer string) ([]spool.Parked, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []spool.Parked
	for lane, log := range m.parked {
		if lane.consumer == consumer && len(log) > 0 {
			out = append(out, spool.Parked{WriteKey: lane.key, Events: int64(len(log)), FirstSeq: log[0].Seq, Oldest: log[0].Stored})
		}
	}
	return out, nil
}

// parkedCount is how many events memStore's lane log holds.
func (m *memStore) parkedCount() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for _, log := range m.parked {
		n += len(log)
	}
	return n
}
