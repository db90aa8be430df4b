package forwarders

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spillwayhq/spillway/spool"
)

var _ store = (*spool.Spool)(nil)

// Group runs one Dispatcher per destination and owns their goroutines.
type Group struct {
	log    *slog.Logger
	ds     []*Dispatcher
	wg     sync.WaitGroup
	ctx    context.Context
	cancel context.CancelFunc

	startOnce    sync.Once
	shutdownOnce sync.Once
	mu           sync.Mutex
	started      bool
	stopped      bool
	shutdownErr  error
}

// New validates the destinations, opens what they need (a file, HTTP
// clients), registers the metrics on reg (nil: nowhere) and moves each
// destination's spool read position back to its durable cursor. Every
// destination name must be one of the spool's consumers. A nil logger
// discards.
func New(dests []Destination, sp *spool.Spool, logger *slog.Logger, reg prometheus.Registerer) (*Group, error) {
	return newGroup(dests, nil, sp, logger, reg)
}

// newGroup is New with forwarders given (a nil entry is built from its
// destination) and any store, for tests.
func newGroup(dests []Destination, fwds []Forwarder, sp store, logger *slog.Logger, reg prometheus.Registerer) (*Group, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("component", "forwarders")
	if err := checkUnique(dests); err != nil {
		return nil, err
	}
	names := make([]string, len(dests))
	for i, d := range dests {
		if err := d.validate(); err != nil {
			return nil, err
		}
		if _, err := d.Privacy(); err != nil {
			return nil, err
		}
		// Rewind also proves the spool knows the name, before anything
		// is opened.
		if err := sp.Rewind(d.Name); err != nil {
			return nil, fmt.Errorf("destination %s: rewind spool cursor: %w", d.Name, err)
		}
		names[i] = d.Name
	}
	m, err := newMetrics(reg, names, sp)
	if err != nil {
		return nil, fmt.Errorf("register metrics: %w", err)
	}
	g := &Group{log: logger}
	g.ctx, g.cancel = context.WithCancel(context.Background())
	for i, d := range dests {
		var f Forwarder
		if i < len(fwds) {
			f = fwds[i]
		}
		if f == nil {
			if f, err = newForwarder(d); err != nil {
				g.closeForwarders(context.Background())
				g.cancel()
				return nil, err
			}
		}
		dp := newDispatcher(d, f, sp, logger, m, g.spawn)
		dp.privacy, _ = d.Privacy() // checked above
		g.ds = append(g.ds, dp)
		if err := dp.openLanes(sp); err != nil {
			g.closeForwarders(context.Background())
			g.cancel()
			return nil, err
		}
	}
	if reg != nil {
		if err := reg.Register(&lanesCollector{ds: g.ds}); err != nil {
			g.closeForwarders(context.Background())
			g.cancel()
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	return g, nil
}

// validate checks what ParseDestination guarantees, for destinations built
// by hand.
func (d Destination) validate() error {
	if !nameRE.MatchString(d.Name) {
		return fmt.Errorf("destination %q: name must match [a-z0-9_-]+", d.Name)
	}
	err := d.options().check(paramName, false)
	if err == nil && (!eventTypesOnly(d.IncludeTypes) || !eventTypesOnly(d.ExcludeTypes)) {
		err = errors.New("include_types and exclude_types take Segment's event types, in lower case")
	}
	if err != nil {
		return fmt.Errorf("destination %s: options out of range (build it with ParseDestination): %w", d.Name, err)
	}
	return nil
}

// spawn runs f on a goroutine that Shutdown waits for.
func (g *Group) spawn(f func()) {
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		f()
	}()
}

// Start starts delivering. It does nothing after the first call or after
// Shutdown.
func (g *Group) Start() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.started || g.stopped {
		return
	}
	g.started = true
	for _, d := range g.ds {
		run := d.loopFunc()
		g.spawn(func() { run(g.ctx) })
		if d.lanes != nil {
			g.spawn(func() { d.lanes.run(g.ctx) })
		}
	}
	g.log.Info("forwarding started", "destinations", len(g.ds))
}

// Shutdown drains: delivery goes on until every destination's backlog is
// empty or ctx ends. Then the sends still in flight are cancelled, what
// finished is acknowledged (the rest is sent again after a restart), and
// the forwarders are closed. It returns ctx's error, naming the
// destinations left undrained, and the forwarders' close errors. Later
// calls return the first call's result.
func (g *Group) Shutdown(ctx context.Context) error {
	g.shutdownOnce.Do(func() {
		g.mu.Lock()
		started := g.started
		g.stopped = true
		g.mu.Unlock()

		// A destination with a fallback leaves the hand-off a share of
		// the time (drainShare).
		drainCtx, cancelDrain := g.drainShare(ctx)
		defer cancelDrain()
		var undrained []string
		if started {
			for _, d := range g.ds {
				close(d.drain)
			}
			// One progress line a second while draining, so whoever
			// watches a slow shutdown sees it move.
			progress := time.NewTicker(time.Second)
			defer progress.Stop()
			for _, d := range g.ds {
			wait:
				for {
					select {
					case <-d.drained:
						break wait
					case <-drainCtx.Done():
						break wait
					case <-progress.C:
						g.logDrainProgress()
					}
				}
				select {
				case <-d.drained:
				default:
					undrained = append(undrained, d.dest.Name)
				}
			}
		}
		g.cancel()
		g.wg.Wait()
		emptied, handOffErr := g.handOff(ctx, undrained)
		undrained = slices.DeleteFunc(undrained, func(n string) bool { return slices.Contains(emptied, n) })
		// Closing flushes and releases; it must happen even when ctx is
		// over, or a file's last lines stay unsynced.
		errs := []error{g.closeForwarders(context.WithoutCancel(ctx)), handOffErr}
		if len(undrained) > 0 {
			errs = append(errs, fmt.Errorf("drain %s: %w", strings.Join(undrained, ", "), drainCtx.Err()))
			g.log.Warn("forwarding stopped before every destination drained; the rest is sent after a restart",
				"undrained", strings.Join(undrained, ","))
		} else if started {
			g.log.Info("forwarding stopped, every destination drained")
		}
		g.shutdownErr = errors.Join(errs...)
	})
	return g.shutdownErr
}

// logDrainProgress logs the events left per destination still draining.
func (g *Group) logDrainProgress() {
	var left []any
	var total int64
	for _, d := range g.ds {
		select {
		case <-d.drained:
			continue
		default:
		}
		n := d.sp.Backlog(d.dest.Name).Events
		total += n
		left = append(left, slog.Int64(d.dest.Name, n))
	}
	g.log.Info("shutdown: draining", "events_left", total, slog.Group("left", left...))
}

// Route returns the filter deciding which events the named destination
// receives (its integrations object, type and event filters), for the live
// tail; nil when no destination has that name. The filter holds a parser:
// one goroutine at a time.
func (g *Group) Route(name string) func(event []byte) bool {
	for _, d := range g.ds {
		if d.dest.Name == name {
			return newRouter(d.dest).wants
		}
	}
	return nil
}

func (g *Group) closeForwarders(ctx context.Context) error {
	var errs []error
	for _, d := range g.ds {
		if err := d.fwd.Close(ctx); err != nil {
			errs = append(errs, fmt.Errorf("close destination %s: %w", d.dest.Name, err))
		}
	}
	return errors.Join(errs...)
}

// Status returns one row per destination, in the order given to New.
func (g *Group) Status() []DestinationStatus {
	out := make([]DestinationStatus, len(g.ds))
	for i, d := range g.ds {
		out[i] = d.Status()
	}
	return out
}
