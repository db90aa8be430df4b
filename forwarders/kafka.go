package forwarders

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spillwayhq/spillway/spool"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/valyala/fastjson"
)

// kafkaForwarder produces each event as one record to one topic. franz-go
// batches, compresses and pipelines per partition; its producer is
// idempotent with acks=all, so its own retries of a produce request never
// duplicate or reorder records within a partition.
//
// Per-key order across batches needs one batch in flight at a time, which
// is why the kind's concurrency defaults to 1 (see ParseDestination):
// Send stops lingering once its records are buffered, and franz-go still
// sends to every partition leader at once.
type kafkaForwarder struct {
	cl      *kgo.Client
	topic   string
	brokers string // for error messages
	key     string
	timeout time.Duration
	linger  time.Duration
	parsers fastjson.ParserPool
	// topicOK is set once a record was produced, and cleared by a failure
	// that may mean the topic went away: until then every Send checks the
	// topic first (see checkTopic).
	topicOK atomic.Bool

	mu        sync.Mutex
	closed    bool           // under mu
	wg        sync.WaitGroup // ProduceSync calls, some outliving their Send
	closeOnce sync.Once
	closeErr  error
}

var _ Forwarder = (*kafkaForwarder)(nil)

// newKafka builds the client. It does not dial: an unreachable cluster is a
// failing destination, retried, not a start-up error. A missing SASL
// password is one, since no retry can fix it.
func newKafka(d Destination) (*kafkaForwarder, error) {
	opts, err := kafkaClientOpts(d)
	if err != nil {
		return nil, fmt.Errorf("destination %s: %w", d.Name, err)
	}
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		// kgo's errors name options, never their values.
		return nil, fmt.Errorf("destination %s: kafka client: %w", d.Name, err)
	}
	o := d.Kafka
	return &kafkaForwarder{
		cl:      cl,
		topic:   o.Topic,
		brokers: strings.Join(o.Brokers, ","),
		key:     o.Key,
		timeout: d.Timeout,
		linger:  o.Linger,
	}, nil
}

func (f *kafkaForwarder) Kind() string { return KindKafka }

// Send produces one record per event and returns once Kafka acknowledged
// every one (acks=all: every in-sync replica has it), or with the records
// that failed, one entry per record:
//
//   - retriable Kafka errors and timeouts: *RetryableError;
//   - a missing topic, refused authorization or authentication, a codec
//     the broker lacks: *MisconfiguredError, never dead-lettered;
//   - a record too large for the producer or the broker, or refused by
//     the broker's validation: *RejectedError for the records of that
//     Kafka batch, which the dispatcher splits until the culprit is alone.
//
// Records failing with one error value share one error value, so the
// dispatcher retries or splits them together.
func (f *kafkaForwarder) Send(ctx context.Context, batch []spool.Record) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("produce: %w", err)
	}
	recs := f.records(batch)
	if !f.enter() {
		return &RetryableError{Err: errors.New("produce: forwarder closed")}
	}
	results, err := f.produceWithin(ctx, recs)
	if err != nil {
		return err
	}
	return f.recordErrors(recs, results)
}

// records builds the batch's Kafka records. A produce abandoned at
// produceWithin's hard timeout may still hold its records after Send
// returns, and the dispatcher reuses a batch's memory then: the records
// get data of their own.
func (f *kafkaForwarder) records(batch []spool.Record) []*kgo.Record {
	size := 0
	for i := range batch {
		size += len(batch[i].Data)
	}
	batch = slices.Clone(batch)
	moveData(make([]byte, 0, size), batch)
	recs := make([]*kgo.Record, len(batch))
	for i := range batch {
		recs[i] = f.record(&batch[i])
	}
	return recs
}

// enter counts a produce in for Close to wait for; false once closed.
func (f *kafkaForwarder) enter() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return false
	}
	f.wg.Add(1)
	return true
}

// produceWithin produces recs, entered, within the destination's timeout.
// franz-go fails the records not yet sent once the produce's context
// ends; records in a request already sent wait for the broker's answer,
// which comes within ProduceRequestTimeout. A hard timeout bounds the wait
// for a broker that never answers; the produce left behind ends by Close.
func (f *kafkaForwarder) produceWithin(ctx context.Context, recs []*kgo.Record) (kgo.ProduceResults, error) {
	pctx, cancel := context.WithTimeout(ctx, f.timeout)
	if !f.topicOK.Load() {
		if err := f.checkTopic(pctx); err != nil {
			cancel()
			f.wg.Done()
			return nil, err
		}
	}
	done := make(chan kgo.ProduceResults, 1)
	go func() {
		defer f.wg.Done()
		defer cancel()
		done <- f.produce(pctx, recs)
	}()
	hardTimeout := 2*f.timeout + time.Second
	hard := time.NewTimer(hardTimeout)
	defer hard.Stop()

	var results kgo.ProduceResults
	select {
	case results = <-done:
	case <-ctx.Done():
		return nil, fmt.Errorf("produce: %w", ctx.Err())
	case <-hard.C:
		f.topicOK.Store(false)
		return nil, &RetryableError{Err: fmt.Errorf("produce to %s at %s: no answer within %v: %w",
			f.topic, f.brokers, hardTimeout, context.DeadlineExceeded)}
	}
	if ctx.Err() != nil && results.FirstErr() != nil {
		// Records failed because the caller gave up: not the cluster's
		// doing, and the dispatcher leaves the batch for a restart.
		return nil, fmt.Errorf("produce: %w", ctx.Err())
	}
	return results, nil
}

// recordErrors is Send's error for the results of recs: nil, or one entry
// per record, the records that failed with one error sharing one
// classified error value. It notes whether the topic proved to be there.
func (f *kafkaForwarder) recordErrors(recs []*kgo.Record, results kgo.ProduceResults) error {
	index := make(map[*kgo.Record]int, len(recs))
	for i, r := range recs {
		index[r] = i
	}
	var (
		errs  []error
		seen  []error // distinct underlying errors, in order of appearance
		wraps []error // their classified wrappers
		ok    bool
	)
	for _, res := range results {
		if res.Err == nil {
			ok = true
			continue
		}
		if errs == nil {
			errs = make([]error, len(recs))
		}
		j := slices.IndexFunc(seen, func(e error) bool { return sameError(e, res.Err) })
		if j < 0 {
			seen = append(seen, res.Err)
			wraps = append(wraps, f.classify(res.Err))
			j = len(seen) - 1
		}
		errs[index[res.Record]] = wraps[j]
	}
	f.topicOK.Store(ok && !slices.ContainsFunc(wraps, func(err error) bool {
		var mis *MisconfiguredError
		return errors.As(err, &mis) || errors.Is(err, context.DeadlineExceeded)
	}))
	if errs == nil {
		return nil
	}
	return &BatchError{Errs: errs}
}

// produce produces recs and waits for every one's result. ProduceSync
// stops the linger of the partitions it wrote to, but only of those the
// client knew: until the topic's partitions are loaded (the first Send
// after start) its records lingered for all of linger, past the timeout
// when linger is longer, and were produced once more by the retry. Then
// Flush stops every linger instead, other Sends' too.
func (f *kafkaForwarder) produce(ctx context.Context, recs []*kgo.Record) kgo.ProduceResults {
	if leader, _, _ := f.cl.PartitionLeader(f.topic, 0); f.linger == 0 || leader >= 0 {
		return f.cl.ProduceSync(ctx, recs...)
	}
	var wg sync.WaitGroup
	results := make(kgo.ProduceResults, 0, len(recs))
	wg.Add(len(recs))
	for _, r := range recs {
		// franz-go calls one client's promises one at a time.
		f.cl.Produce(ctx, r, func(r *kgo.Record, err error) {
			results = append(results, kgo.ProduceResult{Record: r, Err: err})
			wg.Done()
		})
	}
	_ = f.cl.Flush(ctx) // on ctx's end the records fail, and results say so
	wg.Wait()
	return results
}

// checkTopic asks the cluster whether the topic exists and may be written.
// franz-go waits on a topic it cannot find, reloading metadata every few
// seconds, longer than a produce timeout: the records would time out, and
// a missing topic would look like a slow cluster instead of the
// misconfiguration it is. It returns a *MisconfiguredError, or nil when
// the topic is there or the question got no clear answer, in which case
// producing finds out.
func (f *kafkaForwarder) checkTopic(ctx context.Context) error {
	req := kmsg.NewPtrMetadataRequest()
	t := kmsg.NewMetadataRequestTopic()
	t.Topic = kmsg.StringPtr(f.topic)
	req.Topics = append(req.Topics, t)
	req.AllowAutoTopicCreation = false
	resp, err := req.RequestWith(ctx, f.cl)
	if err == nil && len(resp.Topics) == 1 {
		err = kerr.ErrorForCode(resp.Topics[0].ErrorCode)
	}
	if err == nil {
		return nil
	}
	var mis *MisconfiguredError
	if cerr := f.classify(err); errors.As(cerr, &mis) {
		return cerr
	}
	return nil
}

// classify maps a record's produce error to what the dispatcher acts on.
func (f *kafkaForwarder) classify(err error) error {
	switch {
	case errors.Is(err, kerr.MessageTooLarge), errors.Is(err, kerr.RecordListTooLarge),
		errors.Is(err, kerr.InvalidRecord):
		return &RejectedError{Err: fmt.Errorf("produce to %s: %w", f.topic, err)}
	case errors.Is(err, kerr.UnknownTopicOrPartition), errors.Is(err, kerr.UnknownTopicID),
		errors.Is(err, kerr.InvalidTopicException):
		return &MisconfiguredError{Err: fmt.Errorf("produce to %s: topic does not exist (spillway never creates it): %w", f.topic, err)}
	case errors.Is(err, kerr.TopicAuthorizationFailed), errors.Is(err, kerr.ClusterAuthorizationFailed),
		errors.Is(err, kerr.TransactionalIDAuthorizationFailed), errors.Is(err, kerr.SaslAuthenticationFailed),
		errors.Is(err, kerr.UnsupportedSaslMechanism), errors.Is(err, kerr.IllegalSaslState),
		errors.Is(err, kerr.UnsupportedCompressionType), errors.Is(err, kerr.PolicyViolation):
		return &MisconfiguredError{Err: fmt.Errorf("produce to %s: %w", f.topic, err)}
	case errors.Is(err, context.DeadlineExceeded):
		return &RetryableError{Err: fmt.Errorf("produce to %s at %s: not acknowledged within %v: %w",
			f.topic, f.brokers, f.timeout, err)}
	}
	return &RetryableError{Err: fmt.Errorf("produce to %s: %w", f.topic, err)}
}

// record builds the Kafka record of one event: the event's JSON as the
// value, the key from the configured field, and headers naming its type,
// messageId and write key for consumers that route without parsing.
func (f *kafkaForwarder) record(r *spool.Record) *kgo.Record {
	rec := &kgo.Record{Topic: f.topic, Value: r.Data}
	p := f.parsers.Get()
	defer f.parsers.Put(p)
	v, err := p.ParseBytes(r.Data)
	if err != nil {
		// The proxy stored valid JSON; should a record be otherwise, it
		// still goes, unkeyed: a consumer judges it, nothing is lost.
		return rec
	}
	userID, anonID := idField(v, "userId"), idField(v, "anonymousId")
	switch f.key {
	case KafkaKeyMessageID:
		rec.Key = idField(v, "messageId")
	case KafkaKeyAnonymousID:
		rec.Key = firstNonEmpty(anonID, userID)
	default:
		rec.Key = firstNonEmpty(userID, anonID)
	}
	rec.Headers = make([]kgo.RecordHeader, 0, 3)
	if t := v.GetStringBytes("type"); t != nil {
		rec.Headers = append(rec.Headers, kgo.RecordHeader{Key: "type", Value: append([]byte(nil), t...)})
	}
	if id := idField(v, "messageId"); id != nil {
		rec.Headers = append(rec.Headers, kgo.RecordHeader{Key: "messageId", Value: id})
	}
	if r.WriteKey != "" {
		// A consumer relaying to Segment (a central spillway) needs the
		// key each event came with, as the segment kind uses it.
		rec.Headers = append(rec.Headers, kgo.RecordHeader{Key: "writeKey", Value: []byte(r.WriteKey)})
	}
	return rec
}

// idField returns a copy of an id field: a string as is, a number (some
// SDKs send numeric user ids) as its JSON text; nil when absent or empty.
func idField(v *fastjson.Value, name string) []byte {
	f := v.Get(name)
	if f == nil {
		return nil
	}
	switch f.Type() {
	case fastjson.TypeString:
		b, _ := f.StringBytes()
		if len(b) == 0 {
			return nil
		}
		return append([]byte(nil), b...)
	case fastjson.TypeNumber:
		return f.MarshalTo(nil)
	}
	return nil
}

func firstNonEmpty(a, b []byte) []byte {
	if len(a) > 0 {
		return a
	}
	return b
}

// Close flushes what is still buffered, within the destination's timeout,
// then closes the client, which fails whatever is left: records of Sends
// that had returned without success, so never acknowledged in the spool
// and sent again after a restart. Later calls return the first's result.
func (f *kafkaForwarder) Close(ctx context.Context) error {
	f.closeOnce.Do(func() {
		f.mu.Lock()
		f.closed = true
		f.mu.Unlock()

		fctx, cancel := context.WithTimeout(ctx, f.timeout)
		defer cancel()
		// Close does not flush (franz-go's producer.go), so flush first.
		if err := f.cl.Flush(fctx); err != nil {
			f.closeErr = fmt.Errorf("flush kafka producer: %w (unacknowledged events stay in the spool)", err)
		}
		f.cl.Close()
		f.wg.Wait()
	})
	return f.closeErr
}
