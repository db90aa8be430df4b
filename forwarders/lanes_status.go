package forwarders

import (
	"errors"
	"fmt"
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
