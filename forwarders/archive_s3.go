package forwarders

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// objectStore is where an archive puts its objects.
type objectStore interface {
	// put writes the size bytes of body under key, replacing any object
	// there. It returns once the store has the whole object, or an error
	// classified as Send's are. body is read from its start at each call,
	// so a retry sends the same bytes.
	put(ctx context.Context, key string, body io.ReaderAt, size int64) error
}

// s3Store puts objects into a bucket of any S3-compatible store.
type s3Store struct {
	client       *minio.Client
	bucket       string
	storageClass string
	timeout      time.Duration
}

// newS3Store builds the store of an archive destination.
func newS3Store(d Destination) (*s3Store, error) {
	client, err := NewS3Client(d.Archive)
	if err != nil {
		return nil, err
	}
	return &s3Store{client: client, bucket: d.Archive.Bucket, storageClass: d.Archive.StorageClass,
		timeout: d.Timeout}, nil
}

// NewS3Client returns a client of the store a's bucket is in, for the
// archive and for reading it back (spillway replay). Credentials come from
// the standard chain, in its usual order: AWS_ACCESS_KEY_ID and
// AWS_SECRET_ACCESS_KEY (with AWS_SESSION_TOKEN), the shared credentials
// file (AWS_PROFILE, AWS_SHARED_CREDENTIALS_FILE), then web identity
// (AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN, as Kubernetes service
// accounts get them), the ECS container endpoint and instance metadata.
// None is looked up here: a store that refuses them is reported as
// misconfigured by the first request.
func NewS3Client(a ArchiveOptions) (*minio.Client, error) {
	creds := credentials.NewChainCredentials([]credentials.Provider{
		&credentials.EnvAWS{},
		&credentials.FileAWSCredentials{},
		&credentials.IAM{},
	})
	lookup := minio.BucketLookupAuto
	if a.PathStyle {
		lookup = minio.BucketLookupPath
	}
	client, err := minio.New(a.Endpoint, &minio.Options{
		Creds:        creds,
		Secure:       !a.PlainHTTP,
		Region:       a.Region,
		BucketLookup: lookup,
		// Retries are the caller's: the archive's with backoff shared
		// with the gate, reported, and counted.
		MaxRetries: 1,
	})
	if err != nil {
		return nil, fmt.Errorf("s3 client: %w", err)
	}
	return client, nil
}

func (s *s3Store) put(ctx context.Context, key string, body io.ReaderAt, size int64) error {
	putCtx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	// A seekable body of known length: up to singlePutBytes the client
	// hashes it in place (rewinding it) and sends it in one PUT, holding
	// none of it in memory. Beyond, it copies each part into a buffer to
	// hash it, one part at a time: parts of the smallest size S3 takes
	// bound that buffer.
	var partSize uint64
	if size > singlePutBytes {
		partSize = multipartPartBytes
	}
	_, err := s.client.PutObject(putCtx, s.bucket, key, io.NewSectionReader(body, 0, size), size, minio.PutObjectOptions{
		PartSize:     partSize,
		ContentType:  "application/x-ndjson",
		StorageClass: s.storageClass,
		// The payload is not signed chunk by chunk (aws-chunked), which
		// some S3-compatible stores keep inside multipart parts; its MD5
		// lets the store check it instead.
		DisableContentSha256: true,
		SendContentMd5:       true,
	})
	if err != nil {
		return classifyS3(ctx, err)
	}
	return nil
}

// singlePutBytes is the largest object sent in one PUT: minio-go's own
// threshold. multipartPartBytes is the part size of larger ones, S3's
// smallest.
const (
	singlePutBytes     = 16 << 20
	multipartPartBytes = 5 << 20
)

// misconfiguredCodes are the store's answers that only a change of
// configuration or permissions fixes.
var misconfiguredCodes = map[string]bool{
	"NoSuchBucket": true, "AccessDenied": true, "InvalidAccessKeyId": true, "SignatureDoesNotMatch": true,
	"AuthorizationHeaderMalformed": true, "InvalidBucketName": true, "PermanentRedirect": true,
	"AllAccessDisabled": true, "InvalidToken": true, "ExpiredToken": true, "AccountProblem": true,
	"InvalidStorageClass": true, "InvalidRequest": true, "MissingSecurityHeader": true,
}

// classifyS3 maps a store's failure onto the usual states: throttling
// (503 SlowDown), 5xx, timeouts and network errors are retried; refusals
// of us (credentials, bucket, permissions, any other 4xx) are a
// misconfiguration. Nothing is a rejection of the data: an archive takes
// any event, so its events are never dead-lettered for the store.
func classifyS3(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		// The caller's end, not the store's: not retried.
		return fmt.Errorf("put object: %w", ctx.Err())
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return &RetryableError{Err: fmt.Errorf("put object: timeout: %w", context.DeadlineExceeded)}
	}
	var resp minio.ErrorResponse
	if !errors.As(err, &resp) || resp.StatusCode == 0 {
		return &RetryableError{Err: fmt.Errorf("put object: %w", stripURL(err))}
	}
	se := &statusError{code: resp.StatusCode, body: resp.Code + ": " + resp.Message}
	switch {
	case misconfiguredCodes[resp.Code]:
		return &MisconfiguredError{Status: resp.StatusCode, Err: se}
	case resp.StatusCode == http.StatusRequestTimeout, resp.StatusCode == http.StatusTooManyRequests,
		resp.StatusCode >= 500:
		return &RetryableError{Err: se}
	case resp.StatusCode >= 300 && resp.StatusCode < 500:
		return &MisconfiguredError{Status: resp.StatusCode, Err: se}
	}
	return &RetryableError{Err: se}
}
