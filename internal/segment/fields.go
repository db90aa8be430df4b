package segment

// Names of the event fields spillway reads or writes, and of the fields of
// a batch body.
const (
	FieldType              = "type"
	FieldUserID            = "userId"
	FieldAnonymousID       = "anonymousId"
	FieldPreviousID        = "previousId"
	FieldGroupID           = "groupId"
	FieldEvent             = "event"
	FieldMessageID         = "messageId"
	FieldTimestamp         = "timestamp"
	FieldOriginalTimestamp = "originalTimestamp"
	FieldSentAt            = "sentAt"
	FieldReceivedAt        = "receivedAt"
	FieldWriteKey          = "writeKey"
	FieldContext           = "context"
	FieldIntegrations      = "integrations"
	// FieldBatch holds a batch body's events.
	FieldBatch = "batch"
)
