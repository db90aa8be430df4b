package forwarders

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spillwayhq/spillway/spool"
)

// openLanes gives d its lanes, restored from the spool, when it delivers
// per write key.
func (d *Dispatcher) openLanes(sp store) error {
	if !d.dest.lanesOn() {
		return nil
	}
	ls, ok := sp.(laneStore)
	if !ok {
		return fmt.Errorf("destination %s: %w", d.dest.Name, errors.New("lanes need a spool that parks events"))
	}
	l, err := newLanes(d, ls, sp.Position(d.dest.Name))
	if err != nil {
		return err
	}
	d.lanes = l
	if d.dest.Kind != KindSegment {
		d.fwd = perKeyForwarder{d.fwd}
	}
	return nil
}

// addStatus adds the lanes to st, whose main stream's backlog is main.
func (l *lanes) addStatus(st *DestinationStatus, main spool.Backlog, now time.Time) {
	listed, byState, backlog, oldest := l.status(now)
	st.Lanes = listed
	st.LanesNotUp = byState[StateFailing] + byState[StateMisconfigured]
	if st.State == StateUp && l.down.Load() {
		l.mu.Lock()
		st.State = l.allDown
		l.mu.Unlock()
	}
	st.BacklogEvents += backlog
	if !oldest.IsZero() && (main.Events == 0 || oldest.Before(main.Oldest)) {
		st.LagSeconds = max(now.Sub(oldest).Seconds(), 0)
	}
}

var (
	lanesDesc = prometheus.NewDesc("spillway_destination_lanes",
		"Write keys of the destination with a lane of their own, by state: failing or misconfigured, "+
			"or up while their parked events drain.",
		[]string{"destination", "state"}, nil)
	parkedDesc = prometheus.NewDesc("spillway_destination_parked_events",
		"Events parked in the destination's lanes, waiting for their write key to be delivered again.",
		[]string{"destination"}, nil)
)

// laneStates are the values of spillway_destination_lanes's state label.
var laneStates = []State{StateUp, StateFailing, StateMisconfigured}

// lanesCollector reports the lanes at scrape time, as counts: a label per
// write key would be unbounded and would leak the keys.
type lanesCollector struct{ ds []*Dispatcher }

func (c *lanesCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- lanesDesc
	ch <- parkedDesc
}

func (c *lanesCollector) Collect(ch chan<- prometheus.Metric) {
	now := time.Now()
	for _, d := range c.ds {
		if d.lanes == nil {
			continue
		}
		_, byState, backlog, _ := d.lanes.status(now)
		for _, s := range laneStates {
			ch <- prometheus.MustNewConstMetric(lanesDesc, prometheus.GaugeValue, float64(byState[s]), d.dest.Name, string(s))
		}
		ch <- prometheus.MustNewConstMetric(parkedDesc, prometheus.GaugeValue, float64(backlog), d.dest.Name)
	}
}

// LaneStatus is a write key's lane in `spillway status`: a key that is not
// flowing in its destination's main stream.
type LaneStatus struct {
	WriteKey      string    `json:"write_key"` // masked
	State         State     `json:"state"`
	BacklogEvents int64     `json:"backlog_events"`
	LagSeconds    float64   `json:"lag_seconds"`
	LastError     string    `json:"last_error,omitempty"`
	LastErrorAt   time.Time `json:"last_error_at,omitzero"`
}

// lanesListed bounds how many lanes a status lists, the most backlogged
// first: a relay may have thousands, and the counts by state say the rest.
const lanesListed = 50

// status lists the lanes, the most backlogged first, up to lanesListed;
// counts them by state; and sums their backlog and finds their oldest event.
func (l *lanes) status(now time.Time) (listed []LaneStatus, byState map[State]int, backlog int64, oldest time.Time) {
	byState = map[State]int{}
	l.mu.Lock()
	all := make([]LaneStatus, 0, len(l.order))
	for _, ln := range l.order {
		byState[ln.state]++
		backlog += ln.parked
		s := LaneStatus{WriteKey: spool.MaskWriteKey(ln.key), State: ln.state, BacklogEvents: ln.parked, LastErrorAt: ln.lastErrAt}
		if ln.parked > 0 && !ln.oldest.IsZero() {
			s.LagSeconds = max(now.Sub(ln.oldest).Seconds(), 0)
			if oldest.IsZero() || ln.oldest.Before(oldest) {
				oldest = ln.oldest
			}
		}
		if ln.lastErr != nil {
			s.LastError = truncate(ln.lastErr.Error(), errorBodyLimit)
		}
		all = append(all, s)
	}
	l.mu.Unlock()
	slices.SortStableFunc(all, func(a, b LaneStatus) int {
		switch {
		case a.BacklogEvents > b.BacklogEvents:
			return -1
		case a.BacklogEvents < b.BacklogEvents:
			return 1
		}
		return 0
	})
	return all[:min(len(all), lanesListed)], byState, backlog, oldest
}
