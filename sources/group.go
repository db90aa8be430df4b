package sources

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/spillwayhq/spillway/spool"
)

// Store is what a source needs of the spool.
type Store interface {
	// SubmitFrom puts events and dead letters in one commit and returns
	// a channel that receives nil once they are durable, or why not, and
	// how many events it skipped as already stored (their messageId seen
	// within the de-duplication window); on spool.ErrFull or
	// spool.ErrClosed nothing of the call was taken. It keeps nothing of
	// the slices it is given once it returns.
	SubmitFrom(source string, events []spool.Event, dead []spool.DeadLetter) (<-chan error, int, error)
	// Ready is nil while Submit would accept events.
	Ready() error
}

// Group runs every source. Its zero value is not usable; call New.
type Group struct {
	srcs    []*kafkaSource
	log     *slog.Logger
	started bool
}

// New builds a client per source. franz-go starts joining the consumer
// group and fetching ahead at once; nothing is polled, stored or committed
// before Start. A nil logger discards; a nil reg registers nowhere.
func New(srcs []Source, st Store, logger *slog.Logger, reg prometheus.Registerer) (*Group, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("component", "source")
	g := &Group{log: logger}
	names := make([]string, len(srcs))
	for i, src := range srcs {
		names[i] = src.Name
	}
	// Before the clients: their partition callbacks count in it.
	m, err := newMetrics(reg, names, g)
	if err != nil {
		return nil, err
	}
	for _, src := range srcs {
		if src.Kind != KindKafka {
			g.close()
			return nil, fmt.Errorf("source %s: unknown kind %q", src.Name, src.Kind)
		}
		s, err := newKafka(src, st, m, logger.With("source", src.Name))
		if err != nil {
			g.close()
			return nil, err
		}
		g.srcs = append(g.srcs, s)
	}
	return g, nil
}

// Start starts consuming.
func (g *Group) Start() {
	g.started = true
	for _, s := range g.srcs {
		s.start()
	}
}

// Stop stops fetching, waits for what was polled to be durable in the spool
// (or given up), commits the offsets of what is durable and leaves the
// consumer groups, so that the other relays take the partitions at once.
// It must return before the spool closes. ctx bounds the commits.
func (g *Group) Stop(ctx context.Context) error {
	if !g.started {
		g.close()
		return nil
	}
	var errs []error
	for _, s := range g.srcs {
		s.halt()
	}
	for _, s := range g.srcs {
		errs = append(errs, s.stop(ctx))
	}
	return errors.Join(errs...)
}

// close closes the clients of sources never started, which hold no
// offsets and joined no group.
func (g *Group) close() {
	for _, s := range g.srcs {
		s.cl.Close()
	}
}
