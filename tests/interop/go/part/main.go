// Command go-part is a Viam part served by grpc-go, the gRPC server viam-server is built on, for
// tests/interop/python/test_grpc_go.py (issue 26). It is built offline from Debian's
// golang-google-grpc-dev and golang-google-protobuf-dev by `scripts/go-part build`, without
// protoc: the services are registered by hand (grpc.ServiceDesc, as generated code does) and
// every message is raw protobuf bytes, written and read with protowire.
//
//	go-part [-port 0] [-motor m1] [-generic gen1] [-echo echo1]
//
// It binds 127.0.0.1, prints `READY 127.0.0.1:PORT` on stdout once it serves, and
// `CALL /pkg.Service/Method messages=N` on stderr for every call it answers (N: request
// messages received). It answers:
//
//   - viam.robot.v1.RobotService/ResourceNames and ResourceRPCSubtypes: one motor, one generic
//     and one testecho component (what the gateway's health check reads); everything else of
//     RobotService but Tunnel is UNIMPLEMENTED, as from a part without sessions.
//   - RobotService/Tunnel (bidi): Recv() until io.EOF, then one TunnelResponse whose data is
//     "go-part <port>: N messages: d1|d2|..." (the request messages' data), trailer
//     go-part-messages: N. This is the call that hangs when a client stream's end arrives as
//     END_STREAM on the HEADERS frame: grpc-go then never ends Recv().
//   - viam.component.testecho.v1.TestEchoService/EchoBiDi (bidi): Recv() until io.EOF, then one
//     EchoBiDiResponse "<name> got N: m1,m2,..." (the names each message carried must be equal,
//     else INVALID_ARGUMENT).
//   - viam.component.generic.v1.GenericService/DoCommand (unary) on the generic: a result struct
//     {"part": "go-part", "name": <name received>, "grpc_go": <grpc-go version>, "command":
//     <the command struct>}.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
)

// rawCodec replaces the "proto" codec: messages stay the bytes on the wire.
type rawCodec struct{}

func (rawCodec) Name() string { return "proto" }

func (rawCodec) Marshal(v interface{}) ([]byte, error) {
	switch m := v.(type) {
	case []byte:
		return m, nil
	case *[]byte:
		return *m, nil
	}
	return nil, fmt.Errorf("go-part: cannot marshal %T", v)
}

func (rawCodec) Unmarshal(data []byte, v interface{}) error {
	m, ok := v.(*[]byte)
	if !ok {
		return fmt.Errorf("go-part: cannot unmarshal into %T", v)
	}
	*m = append((*m)[:0], data...)
	return nil
}

func init() {
	encoding.RegisterCodec(rawCodec{})
}

type part struct {
	port    int
	motor   string
	generic string
	echo    string
}

func trace(method string, messages int) {
	fmt.Fprintf(os.Stderr, "CALL %s messages=%d\n", method, messages)
}

// === protobuf by hand ===

func appendString(b []byte, field protowire.Number, s string) []byte {
	b = protowire.AppendTag(b, field, protowire.BytesType)
	return protowire.AppendString(b, s)
}

func appendMessage(b []byte, field protowire.Number, msg []byte) []byte {
	b = protowire.AppendTag(b, field, protowire.BytesType)
	return protowire.AppendBytes(b, msg)
}

// resourceName is viam.common.v1.ResourceName (name empty for an API).
func resourceName(subtype, name string) []byte {
	var b []byte
	b = appendString(b, 1, "rdk")
	b = appendString(b, 2, "component")
	b = appendString(b, 3, subtype)
	if name != "" {
		b = appendString(b, 4, name)
	}
	return b
}

// fields reads the top-level length-delimited fields of a message (later ones win) and fails on
// anything that is not protobuf.
func fields(msg []byte) (map[protowire.Number][]byte, error) {
	out := map[protowire.Number][]byte{}
	for len(msg) > 0 {
		num, typ, n := protowire.ConsumeTag(msg)
		if n < 0 {
			return nil, protowire.ParseError(n)
		}
		msg = msg[n:]
		if typ == protowire.BytesType {
			v, m := protowire.ConsumeBytes(msg)
			if m < 0 {
				return nil, protowire.ParseError(m)
			}
			out[num] = v
			msg = msg[m:]
			continue
		}
		m := protowire.ConsumeFieldValue(num, typ, msg)
		if m < 0 {
			return nil, protowire.ParseError(m)
		}
		msg = msg[m:]
	}
	return out, nil
}

// structEntry is one `fields` entry of a google.protobuf.Struct whose value is `value` (a
// google.protobuf.Value's bytes).
func structEntry(key string, value []byte) []byte {
	var entry []byte
	entry = appendString(entry, 1, key)
	entry = appendMessage(entry, 2, value)
	return appendMessage(nil, 1, entry)
}

func stringValue(s string) []byte { return appendString(nil, 3, s) }

func structValue(s []byte) []byte { return appendMessage(nil, 5, s) }

// === handlers ===

func (p *part) resourceNames(srv interface{}, ctx context.Context, dec func(interface{}) error, _ grpc.UnaryServerInterceptor) (interface{}, error) {
	var req []byte
	if err := dec(&req); err != nil {
		return nil, err
	}
	trace("/viam.robot.v1.RobotService/ResourceNames", 1)
	var resp []byte
	resp = appendMessage(resp, 1, resourceName("motor", p.motor))
	resp = appendMessage(resp, 1, resourceName("generic", p.generic))
	resp = appendMessage(resp, 1, resourceName("testecho", p.echo))
	return resp, nil
}

func (p *part) resourceRPCSubtypes(srv interface{}, ctx context.Context, dec func(interface{}) error, _ grpc.UnaryServerInterceptor) (interface{}, error) {
	var req []byte
	if err := dec(&req); err != nil {
		return nil, err
	}
	trace("/viam.robot.v1.RobotService/ResourceRPCSubtypes", 1)
	var resp []byte
	for _, api := range [][2]string{
		{"motor", "viam.component.motor.v1.MotorService"},
		{"generic", "viam.component.generic.v1.GenericService"},
		{"testecho", "viam.component.testecho.v1.TestEchoService"},
	} {
		var subtype []byte
		subtype = appendMessage(subtype, 1, resourceName(api[0], ""))
		subtype = appendString(subtype, 2, api[1])
		resp = appendMessage(resp, 1, subtype)
	}
	return resp, nil
}

func (p *part) doCommand(srv interface{}, ctx context.Context, dec func(interface{}) error, _ grpc.UnaryServerInterceptor) (interface{}, error) {
	var req []byte
	if err := dec(&req); err != nil {
		return nil, err
	}
	trace("/viam.component.generic.v1.GenericService/DoCommand", 1)
	f, err := fields(req)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "DoCommandRequest: %v", err)
	}
	name := string(f[1])
	if name != p.generic {
		return nil, status.Errorf(codes.NotFound, "no generic %q on this part", name)
	}
	var result []byte
	result = append(result, structEntry("part", stringValue("go-part"))...)
	result = append(result, structEntry("name", stringValue(name))...)
	result = append(result, structEntry("grpc_go", stringValue(grpc.Version))...)
	result = append(result, structEntry("command", structValue(f[2]))...)
	return appendMessage(nil, 1, result), nil
}

// tunnel reads every request message until the client half-closes, then answers once.
func (p *part) tunnel(srv interface{}, stream grpc.ServerStream) error {
	var data []string
	for {
		var msg []byte
		err := stream.RecvMsg(&msg)
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		f, perr := fields(msg)
		if perr != nil {
			return status.Errorf(codes.InvalidArgument, "TunnelRequest: %v", perr)
		}
		data = append(data, string(f[2]))
	}
	trace("/viam.robot.v1.RobotService/Tunnel", len(data))
	stream.SetTrailer(metadata.Pairs("go-part-messages", fmt.Sprint(len(data))))
	answer := fmt.Sprintf("go-part %d: %d messages: %s", p.port, len(data), strings.Join(data, "|"))
	return stream.SendMsg(appendMessage(nil, 1, []byte(answer)))
}

// echoBiDi reads every request message until the client half-closes, then answers once.
func (p *part) echoBiDi(srv interface{}, stream grpc.ServerStream) error {
	var name string
	var messages []string
	for {
		var msg []byte
		err := stream.RecvMsg(&msg)
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		f, perr := fields(msg)
		if perr != nil {
			return status.Errorf(codes.InvalidArgument, "EchoBiDiRequest: %v", perr)
		}
		if len(messages) > 0 && string(f[1]) != name {
			return status.Errorf(codes.InvalidArgument, "message %d names %q, the first named %q", len(messages)+1, f[1], name)
		}
		name = string(f[1])
		messages = append(messages, string(f[2]))
	}
	trace("/viam.component.testecho.v1.TestEchoService/EchoBiDi", len(messages))
	if len(messages) > 0 && name != p.echo {
		return status.Errorf(codes.NotFound, "no testecho %q on this part", name)
	}
	answer := fmt.Sprintf("%s got %d: %s", name, len(messages), strings.Join(messages, ","))
	return stream.SendMsg(appendMessage(nil, 1, []byte(answer)))
}

func main() {
	port := flag.Int("port", 0, "TCP port on 127.0.0.1 (0: any free port)")
	motor := flag.String("motor", "m1", "the motor's name")
	generic := flag.String("generic", "gen1", "the generic component's name")
	echo := flag.String("echo", "echo1", "the testecho component's name")
	flag.Parse()

	lis, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", *port))
	if err != nil {
		fmt.Fprintln(os.Stderr, "go-part:", err)
		os.Exit(1)
	}
	p := &part{port: lis.Addr().(*net.TCPAddr).Port, motor: *motor, generic: *generic, echo: *echo}
	srv := grpc.NewServer()
	// HandlerType: any value implements interface{}, so the descriptors need no Go interface.
	srv.RegisterService(&grpc.ServiceDesc{
		ServiceName: "viam.robot.v1.RobotService",
		HandlerType: (*interface{})(nil),
		Methods: []grpc.MethodDesc{
			{MethodName: "ResourceNames", Handler: p.resourceNames},
			{MethodName: "ResourceRPCSubtypes", Handler: p.resourceRPCSubtypes},
		},
		Streams: []grpc.StreamDesc{
			{StreamName: "Tunnel", Handler: p.tunnel, ServerStreams: true, ClientStreams: true},
		},
	}, p)
	srv.RegisterService(&grpc.ServiceDesc{
		ServiceName: "viam.component.generic.v1.GenericService",
		HandlerType: (*interface{})(nil),
		Methods:     []grpc.MethodDesc{{MethodName: "DoCommand", Handler: p.doCommand}},
	}, p)
	srv.RegisterService(&grpc.ServiceDesc{
		ServiceName: "viam.component.testecho.v1.TestEchoService",
		HandlerType: (*interface{})(nil),
		Streams: []grpc.StreamDesc{
			{StreamName: "EchoBiDi", Handler: p.echoBiDi, ServerStreams: true, ClientStreams: true},
		},
	}, p)
	fmt.Printf("READY %s\n", lis.Addr())
	if err := srv.Serve(lis); err != nil {
		fmt.Fprintln(os.Stderr, "go-part:", err)
		os.Exit(1)
	}
}
