package main

import (
	"bytes"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	cdcv1 "github.com/fluxkv/fluxkv/gen/flux/cdc/v1"
	"github.com/fluxkv/fluxkv/platform/cdc"
)

// FuzzEventJSON: whatever message sits on the queue `flux cdc` tails
// (anyone allowed to publish to the exchange can put one there), turning
// it into a line of output never panics; a message of another type is
// skipped; and what is printed is one line of JSON holding the event the
// body encodes.
func FuzzEventJSON(f *testing.F) {
	at := time.Date(2026, 8, 9, 10, 11, 12, 13, time.UTC)
	for _, ev := range []*cdcv1.ChangeEvent{
		{NodeId: "node-1", Revision: 7, Op: cdcv1.Op_OP_PUT, Key: "user/7", Value: []byte("{\"n\":\n1}"), CommitTime: timestamppb.New(at), ExpireTime: timestamppb.New(at.Add(time.Hour)), Epoch: 3},
		{NodeId: "node-2", Revision: 8, Op: cdcv1.Op_OP_DELETE, Key: "line\nbreak", PreviousValue: []byte{}, CommitTime: timestamppb.New(at)},
		{Revision: 9, Op: cdcv1.Op_OP_EXPIRE, Key: "k", Internal: true},
	} {
		b, err := proto.Marshal(ev)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(cdc.MessageType, b)
		f.Add("", b)
	}
	f.Add("flux.cdc.v2.ChangeEvent", []byte{})
	f.Add(cdc.MessageType, []byte{0x3a, 0x06, 0x08, 0xff, 0xff, 0xff, 0xff, 0x7f}) // a commit time JSON cannot hold
	f.Fuzz(func(t *testing.T, typ string, body []byte) {
		line, err := eventJSON(amqp.Delivery{Type: typ, Body: body})
		if err != nil {
			return
		}
		if typ != "" && typ != cdc.MessageType {
			t.Fatalf("printed a message of type %q", typ)
		}
		if bytes.ContainsAny(line, "\r\n") {
			t.Fatalf("%x prints as more than one line: %q", body, line)
		}
		var printed, sent cdcv1.ChangeEvent
		if err := protojson.Unmarshal(line, &printed); err != nil {
			t.Fatalf("%x prints as %q, which is not an event: %v", body, line, err)
		}
		// JSON has no room for fields this build does not know.
		if err := (proto.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(body, &sent); err != nil || !proto.Equal(&printed, &sent) {
			t.Fatalf("%x holds %v, prints as %v, %v", body, &sent, &printed, err)
		}
	})
}
