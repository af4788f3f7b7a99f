package changelog

import (
	"errors"
	"fmt"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"

	cdcv1 "github.com/fluxkv/fluxkv/gen/flux/cdc/v1"
	"github.com/fluxkv/fluxkv/platform/store"
)

// Field numbers of flux.cdc.v1.ChangeEvent and google.protobuf.Timestamp,
// for the replay decoder.
const (
	fieldNodeID        = 1
	fieldRevision      = 2
	fieldOp            = 3
	fieldKey           = 4
	fieldValue         = 5
	fieldPreviousValue = 6
	fieldCommitTime    = 7
	fieldExpireTime    = 8
	fieldInternal      = 10

	fieldSeconds = 1
	fieldNanos   = 2
)

var errMalformed = errors.New("malformed record")

// decodeChange decodes a ChangeEvent's wire form straight into a store
// change. Replay reads every record of the log, so it skips the generic
// decoder's message and timestamp allocations: only the key and value are
// copied out of b. It accepts what proto.Unmarshal accepts, less an op or
// a revision no log holds, and nothing more (TestDecodeChangeMatchesProto
// and FuzzDecodeRecord hold it to that): readers hand records on as they
// are, to decoders that would refuse more. It skips unknown fields, so
// newer writers can add some.
func decodeChange(b []byte) (store.Change, error) {
	c, _, err := decodeRecord(b)
	return c, err
}

// decodeRecord is decodeChange that also reports whether the record is
// internal (ChangeEvent.internal), which readers of the log need and
// replay does not.
func decodeRecord(b []byte) (c store.Change, internal bool, err error) {
	var op cdcv1.Op
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 || num > protowire.MaxValidNumber {
			return c, false, errMalformed
		}
		b = b[n:]
		switch {
		case num == fieldNodeID && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(b)
			if n < 0 || !utf8.Valid(v) {
				return c, false, errMalformed
			}
			b = b[n:]
		case num == fieldRevision && typ == protowire.VarintType:
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return c, false, errMalformed
			}
			c.Revision, b = int64(v), b[n:]
		case num == fieldOp && typ == protowire.VarintType:
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return c, false, errMalformed
			}
			op, b = cdcv1.Op(int32(v)), b[n:]
		case num == fieldKey && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(b)
			if n < 0 || !utf8.Valid(v) {
				return c, false, errMalformed
			}
			c.Key, b = string(v), b[n:]
		case num == fieldValue && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return c, false, errMalformed
			}
			c.Value, b = append([]byte{}, v...), b[n:]
		case num == fieldInternal && typ == protowire.VarintType:
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return c, false, errMalformed
			}
			internal, b = v != 0, b[n:]
		case (num == fieldCommitTime || num == fieldExpireTime) && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return c, false, errMalformed
			}
			t, err := decodeTimestamp(v)
			if err != nil {
				return c, false, err
			}
			if num == fieldCommitTime {
				c.CommitTime = t
			} else {
				c.ExpireTime = t
			}
			b = b[n:]
		default:
			n := protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return c, false, errMalformed
			}
			b = b[n:]
		}
	}
	switch op {
	case cdcv1.Op_OP_PUT:
		c.Op = store.OpPut
	case cdcv1.Op_OP_DELETE:
		c.Op = store.OpDelete
	case cdcv1.Op_OP_EXPIRE:
		c.Op = store.OpExpire
	default:
		return c, false, fmt.Errorf("record with op %v", op)
	}
	if c.Revision < 1 {
		return c, false, fmt.Errorf("record with revision %d", c.Revision)
	}
	return c, internal, nil
}

func decodeTimestamp(b []byte) (time.Time, error) {
	var secs, nanos int64
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 || num > protowire.MaxValidNumber {
			return time.Time{}, errMalformed
		}
		b = b[n:]
		if (num == fieldSeconds || num == fieldNanos) && typ == protowire.VarintType {
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return time.Time{}, errMalformed
			}
			if num == fieldSeconds {
				secs = int64(v)
			} else {
				nanos = int64(int32(v))
			}
			b = b[n:]
			continue
		}
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return time.Time{}, errMalformed
		}
		b = b[n:]
	}
	return time.Unix(secs, nanos).UTC(), nil
}
