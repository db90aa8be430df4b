package sources

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/valyala/fastjson"

	"github.com/spillwayhq/spillway/spool"
)

// Header keys of the records spillway's Kafka destination writes.
const (
	headerWriteKey  = "writeKey"
	headerMessageID = "messageId"
)

const (
	// maxPollRecords bounds one poll: the records held until they are
	// durable. A poll is stored in chunks of chunkBytes (or chunkEvents),
	// about one group commit of the spool each, so that the next chunk is
	// compressed while the previous one is fsynced and every chunk fits
	// the spool's recycled block buffers; larger ones were built in fresh
	// buffers grown by doubling, which at a relay's rate cost more CPU
	// than anything else.
	maxPollRecords = 4000
	chunkBytes     = 1 << 20
	chunkEvents    = 2500
	// fetchMaxBytes bounds one fetch response, compressed. franz-go
	// buffers one per broker ahead of the polls, decompressed: a relay's
	// largest memory after the spool's. 1 MiB of zstd-compressed events
	// is a few polls' worth.
	fetchMaxBytes = 1 << 20
	// commitInterval is how often marked offsets are committed: what a
	// relay killed with kill -9 makes the next owner read again is what
	// it stored in the last interval.
	commitInterval = time.Second
	// roomCheck is how often a source waiting for a full spool asks it
	// again; the spool measures itself once a second.
	roomCheck = 100 * time.Millisecond
	// retryMin and retryMax bound the wait after a poll of which nothing
	// was stored, other than for a full spool (a disk error).
	retryMin, retryMax = 100 * time.Millisecond, 5 * time.Second
)

// kafkaSource consumes one topic as a member of a consumer group. One
// goroutine (run) polls, stores and marks; franz-go's own goroutines
// heartbeat, fetch ahead, commit marked offsets every commitInterval, and
// call the partition callbacks, which BlockRebalanceOnPoll keeps from
// running between a poll and its AllowRebalance.
type kafkaSource struct {
	name, topic string
	cl          *kgo.Client
	st          Store
	log         *slog.Logger
	m           *metrics
	parsers     fastjson.ParserPool
	chunkBytes  int // chunkBytes; tests make it smaller

	ctx    context.Context // ends at halt: stops polling
	cancel context.CancelFunc
	done   chan struct{} // closed when run returns

	mu    sync.Mutex
	owned map[int32]bool  // partitions assigned to this member
	hwm   map[int32]int64 // each owned partition's high watermark at its last fetch
}

func newKafka(src Source, st Store, m *metrics, logger *slog.Logger) (*kafkaSource, error) {
	o := src.Kafka
	s := &kafkaSource{
		name: src.Name, topic: o.Topic, st: st, log: logger, m: m, chunkBytes: chunkBytes,
		done:  make(chan struct{}),
		owned: map[int32]bool{}, hwm: map[int32]int64{},
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	opts, err := o.Opts()
	if err != nil {
		return nil, fmt.Errorf("source %s: %w", src.Name, err)
	}
	opts = append(opts,
		kgo.ConsumerGroup(o.Group),
		kgo.ConsumeTopics(o.Topic),
		// A new group starts at the oldest record still in the topic:
		// a relay set up after the sidecars takes what they wrote.
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		// Commit only what is marked, and mark only what is durable.
		kgo.AutoCommitMarks(),
		kgo.AutoCommitInterval(commitInterval),
		kgo.AutoCommitCallback(s.committed),
		// No rebalance between a poll and its AllowRebalance: a mark
		// never lands on a partition already handed to another member,
		// and SetOffsets may rewind what was polled.
		kgo.BlockRebalanceOnPoll(),
		kgo.OnPartitionsAssigned(s.assigned),
		kgo.OnPartitionsRevoked(s.revoked),
		kgo.OnPartitionsLost(s.lost),
		kgo.SessionTimeout(o.SessionTimeout),
		// A member learns that the group rebalances at its next
		// heartbeat: every partition that moves waits for it, when a
		// relay joins or leaves. One a second (Kafka's default is 3 s)
		// costs nothing worth counting.
		kgo.HeartbeatInterval(min(time.Second, o.SessionTimeout/3)),
		kgo.FetchMaxBytes(fetchMaxBytes),
		kgo.FetchMaxPartitionBytes(fetchMaxBytes/4),
	)
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		// kgo's errors name options, never their values.
		return nil, fmt.Errorf("source %s: kafka client: %w", src.Name, err)
	}
	s.cl = cl
	return s, nil
}

func (s *kafkaSource) start() {
	go func() {
		defer close(s.done)
		s.run()
	}()
	s.log.Info("consuming", "topic", s.topic)
}

// halt stops polling; stop waits for it.
func (s *kafkaSource) halt() { s.cancel() }

// stop waits for run to end, commits what is marked and leaves the group.
// Close would commit the marks too, as it revokes, but without a bound and
// without telling whether it did.
func (s *kafkaSource) stop(ctx context.Context) error {
	s.halt()
	select {
	case <-s.done:
	case <-ctx.Done():
		// A commit that never ends (a disk that stopped taking writes)
		// must not hold the shutdown: its records are not marked, and
		// the partitions' next owner reads them again.
		s.log.Warn("stop: the poll in hand is still being stored; its offsets stay uncommitted")
	}
	err := s.cl.CommitMarkedOffsets(ctx)
	if err != nil {
		s.m.commitErrors.WithLabelValues(s.name).Inc()
		err = fmt.Errorf("source %s: commit offsets at stop: %w (the next owner reads again what was stored since the last commit)", s.name, err)
	}
	// With BlockRebalanceOnPoll, Close leaves the group and waits for the
	// rebalance that causes, which a poll not yet allowed blocks: run may
	// have returned holding one (the spool refusing during the shutdown),
	// or still be storing it. A relay stopped so never exited. Its records
	// are not marked: the partitions' next owner reads them again.
	s.cl.CloseAllowingRebalance()
	s.log.Info("stopped consuming", "topic", s.topic)
	return err
}

func (s *kafkaSource) run() {
	retry := retryMin
	var lastErr string
	for {
		if !s.waitForRoom() {
			return
		}
		fs := s.cl.PollRecords(s.ctx, maxPollRecords)
		if s.ctx.Err() != nil || fs.IsClientClosed() {
			s.cl.AllowRebalance()
			return
		}
		if err := fs.Err0(); err != nil && err.Error() != lastErr {
			// franz-go retries on its own; say so once per new error.
			lastErr = err.Error()
			s.log.Warn("fetch failed; retrying", "err", err)
		}
		s.noteHighWatermarks(fs)
		recs := fs.Records()
		if len(recs) == 0 {
			s.cl.AllowRebalance()
			continue
		}
		durable, err := s.store(recs)
		if durable < len(recs) {
			// Fetch what is not stored again later, rather than hold it
			// while a rebalance waits.
			s.rewind(recs[durable:])
		}
		// MarkCommitRecords sorts what it is given: the stored ones only.
		s.cl.MarkCommitRecords(recs[:durable]...)
		s.cl.AllowRebalance()
		if durable > 0 {
			// Progress: a failure now is not the one waited for before.
			retry = retryMin
		}
		switch {
		case err == nil:
		case errors.Is(err, spool.ErrFull):
			// waitForRoom pauses until the spool takes events again.
		case errors.Is(err, spool.ErrClosed), s.ctx.Err() != nil:
			return
		default:
			s.log.Error("store records failed; fetching them again", "err", err, "retry_in", retry)
			select {
			case <-time.After(retry):
			case <-s.ctx.Done():
				return
			}
			retry = min(2*retry, retryMax)
		}
	}
}

// waitForRoom returns once the spool takes events, fetching paused while
// it is full (--when-full=block); false when the source or the spool is
// stopping.
func (s *kafkaSource) waitForRoom() bool {
	err := s.st.Ready()
	if err == nil {
		return true
	}
	if !errors.Is(err, spool.ErrFull) {
		return false
	}
	s.cl.PauseFetchTopics(s.topic)
	s.m.paused.WithLabelValues(s.name).Set(1)
	s.log.Warn("spool full: fetching paused")
	defer func() {
		s.cl.ResumeFetchTopics(s.topic)
		s.m.paused.WithLabelValues(s.name).Set(0)
	}()
	tick := time.NewTicker(roomCheck)
	defer tick.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return false
		case <-tick.C:
		}
		switch err := s.st.Ready(); {
		case err == nil:
			s.log.Info("spool has room: fetching resumed")
			return true
		case !errors.Is(err, spool.ErrFull):
			return false
		}
	}
}

// store hands the records' events, and the dead letters of the invalid
// ones, to the spool in chunks of about chunkBytes, and waits until each is
// durable or refused. It returns how many of recs, from the first, are
// durable: the chunks before the first that failed. A chunk after a failed
// one may be durable too; it is not counted, so that no offset is marked
// past a record that is not stored, and it is stored again once fetched
// again (a duplicate, never a loss).
func (s *kafkaSource) store(recs []*kgo.Record) (int, error) {
	type chunk struct {
		end             int // recs[:end] are in this chunk or before it
		events, invalid int
		done            <-chan error
	}
	var (
		chunks    []chunk
		submitErr error
		size      int
		events    = make([]spool.Event, 0, min(len(recs), chunkEvents))
		dead      []spool.DeadLetter
	)
	for i, r := range recs {
		ev, dl := s.event(r)
		if dl != nil {
			dead = append(dead, *dl)
		} else {
			events = append(events, ev)
		}
		size += len(r.Value)
		if size < s.chunkBytes && len(events) < chunkEvents && i < len(recs)-1 {
			continue
		}
		// Submit copies: events and dead are ours again at once.
		done, skipped, err := s.st.SubmitFrom(spool.SourceKafka, events, dead)
		if err != nil {
			submitErr = err
			break
		}
		chunks = append(chunks, chunk{end: i + 1, events: len(events) - skipped, invalid: len(dead), done: done})
		events, dead, size = events[:0], dead[:0], 0
	}
	durable, stored, invalid := 0, 0, 0
	var err error
	for _, c := range chunks {
		if e := <-c.done; e != nil && err == nil {
			err = e
		}
		if err == nil {
			durable, stored, invalid = c.end, stored+c.events, invalid+c.invalid
		}
	}
	s.m.records.WithLabelValues(s.name, outcomeStored).Add(float64(stored))
	s.m.records.WithLabelValues(s.name, outcomeInvalid).Add(float64(invalid))
	if err == nil {
		err = submitErr
	}
	return durable, err
}

// event is the spool event of one record, as spillway's Kafka destination
// wrote it: the value is the event's JSON, the writeKey header the key it
// came with. A value that is not a JSON object is returned as a dead
// letter instead (reason invalid), its value kept as a JSON string.
func (s *kafkaSource) event(r *kgo.Record) (spool.Event, *spool.DeadLetter) {
	var writeKey string
	var messageID []byte
	for _, h := range r.Headers {
		switch h.Key {
		case headerWriteKey:
			writeKey = string(h.Value)
		case headerMessageID:
			messageID = h.Value
		}
	}
	if err := s.checkObject(r.Value); err != nil {
		return spool.Event{}, &spool.DeadLetter{
			Reason:   spool.ReasonInvalid,
			Error:    fmt.Sprintf("kafka record %s/%d at offset %d: %v", r.Topic, r.Partition, r.Offset, err),
			At:       time.Now().UTC(),
			WriteKey: writeKey,
			Event:    quoteJSON(r.Value),
		}
	}
	// A record read again after a rebalance, or sent twice by a sidecar,
	// carries the same messageId: the spool stores it once.
	return spool.Event{WriteKey: writeKey, MessageID: messageID, Data: r.Value}, nil
}

func (s *kafkaSource) checkObject(b []byte) error {
	p := s.parsers.Get()
	defer s.parsers.Put(p)
	v, err := p.ParseBytes(b)
	if err != nil {
		return fmt.Errorf("value is not JSON: %w", err)
	}
	if v.Type() != fastjson.TypeObject {
		return fmt.Errorf("value is a JSON %s, not an object", v.Type())
	}
	return nil
}

func quoteJSON(b []byte) []byte {
	var a fastjson.Arena
	return a.NewStringBytes(b).MarshalTo(nil)
}

// rewind sets each partition of recs back to its first record in recs, so
// that records polled and not stored are fetched again. Called before
// AllowRebalance, while the partitions are surely this member's.
func (s *kafkaSource) rewind(recs []*kgo.Record) {
	first := map[int32]kgo.EpochOffset{}
	for _, r := range recs {
		if _, ok := first[r.Partition]; !ok {
			first[r.Partition] = kgo.EpochOffset{Epoch: r.LeaderEpoch, Offset: r.Offset}
		}
	}
	s.log.Debug("rewound records not stored", "partitions", len(first))
	s.cl.SetOffsets(map[string]map[int32]kgo.EpochOffset{s.topic: first})
}

func (s *kafkaSource) noteHighWatermarks(fs kgo.Fetches) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fs.EachPartition(func(p kgo.FetchTopicPartition) {
		if p.Topic == s.topic && s.owned[p.Partition] && p.Err == nil {
			s.hwm[p.Partition] = p.HighWatermark
		}
	})
}

// commitLag is what the owned partitions hold past the committed offsets,
// for those whose high watermark and commit are known.
func (s *kafkaSource) commitLag() int64 {
	committed := s.cl.CommittedOffsets()[s.topic]
	s.mu.Lock()
	defer s.mu.Unlock()
	var lag int64
	for p, hwm := range s.hwm {
		if c, ok := committed[p]; ok && hwm > c.Offset {
			lag += hwm - c.Offset
		}
	}
	return lag
}

func (s *kafkaSource) assigned(_ context.Context, _ *kgo.Client, parts map[string][]int32) {
	s.changePartitions(changeAssigned, parts[s.topic])
}

// revoked commits what is marked before the partitions go, so that their
// next owner starts where this one stored up to.
func (s *kafkaSource) revoked(ctx context.Context, cl *kgo.Client, parts map[string][]int32) {
	if err := cl.CommitMarkedOffsets(ctx); err != nil {
		s.m.commitErrors.WithLabelValues(s.name).Inc()
		s.log.Warn("commit offsets of revoked partitions failed; their next owner reads again what was stored since the last commit", "err", err)
	}
	s.changePartitions(changeRevoked, parts[s.topic])
}

// lost partitions are already another member's: committing would fail or
// move that member's offsets back.
func (s *kafkaSource) lost(_ context.Context, _ *kgo.Client, parts map[string][]int32) {
	s.changePartitions(changeLost, parts[s.topic])
}

func (s *kafkaSource) changePartitions(change string, parts []int32) {
	if len(parts) == 0 {
		return
	}
	s.mu.Lock()
	for _, p := range parts {
		if change == changeAssigned {
			s.owned[p] = true
		} else {
			delete(s.owned, p)
			delete(s.hwm, p)
		}
	}
	n := len(s.owned)
	s.mu.Unlock()
	s.m.rebalances.WithLabelValues(s.name, change).Inc()
	s.m.partitions.WithLabelValues(s.name).Set(float64(n))
	s.log.Info("partitions "+change, "partitions", parts, "owned", n)
}

// committed is the autocommit's callback: a failed commit is retried by
// the next one, which carries the same marks or later ones.
func (s *kafkaSource) committed(_ *kgo.Client, _ *kmsg.OffsetCommitRequest, resp *kmsg.OffsetCommitResponse, err error) {
	if err == nil {
		for _, t := range resp.Topics {
			for _, p := range t.Partitions {
				if err = kerr.ErrorForCode(p.ErrorCode); err != nil {
					break
				}
			}
		}
	}
	if err == nil || errors.Is(err, context.Canceled) {
		return
	}
	s.m.commitErrors.WithLabelValues(s.name).Inc()
	s.log.Warn("commit offsets failed; the next commit carries them", "err", err)
}
