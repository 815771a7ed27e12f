// xsell-client: calls GetModelInfo and Recommend on an xsell server with stubs
// generated from protos/ (see ../build.sh) and prints both answers as one JSON
// object {"model_info": ..., "recommend": ...} in the proto3 JSON mapping with the
// .proto field names, so its output can be compared with the Python and Node clients.
//
//	xsell-client -address 127.0.0.1:50051 -user U -cart A,B -strategy up_sell -limit 5 [-explain]
//	xsell-client -address 127.0.0.1:50051 -request '{"user_id": "U", "cart": [{"item_id": "A"}]}'
//
// Security, as `xsell recommend`: --tls-ca CA.pem (TLS; --tls alone: the system's roots),
// --tls-cert/--tls-key (mutual TLS), --tls-server-name NAME (the name in the server's
// certificate when it is not the address's host), --token (default $XSELL_TOKEN).
// Without a --tls* flag the channel is plaintext.
//
// The flag package takes one dash or two; messages spell flags with two, as the
// Python and Node clients and the documentation do.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"
	"unicode"

	xsellv1 "github.com/xsell/xsell/gen/go/xsell/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

var strategies = map[string]xsellv1.Strategy{
	"cross_sell": xsellv1.Strategy_STRATEGY_CROSS_SELL,
	"up_sell":    xsellv1.Strategy_STRATEGY_UP_SELL,
	"both":       xsellv1.Strategy_STRATEGY_BOTH,
}

// codeName spells a status code as the .proto and the other clients do
// ("InvalidArgument" -> "INVALID_ARGUMENT").
func codeName(c codes.Code) string {
	if c == codes.OK {
		return "OK"
	}
	var b strings.Builder
	for i, r := range c.String() {
		if i > 0 && unicode.IsUpper(r) {
			b.WriteByte('_')
		}
		b.WriteRune(unicode.ToUpper(r))
	}
	return b.String()
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "xsell-client: "+format+"\n", args...)
	os.Exit(2)
}

// readPEM reads a PEM file now, so a bad path fails before any call, naming the flag
// (e.g. "--tls-ca") and the file.
func readPEM(file, flagName string) ([]byte, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		var pathErr *os.PathError
		if errors.As(err, &pathErr) {
			err = pathErr.Err // the path is named once, below
		}
		return nil, fmt.Errorf("%s: cannot read %s: %v", flagName, file, err)
	}
	if !strings.Contains(string(data), "-----BEGIN ") {
		return nil, fmt.Errorf("%s: %s is not a PEM file", flagName, file)
	}
	return data, nil
}

// tlsConfig is the client side of TLS: caFile "" = the system's roots; certFile and
// keyFile (both or neither) = mutual TLS; serverName "" = the address's host.
func tlsConfig(caFile, certFile, keyFile, serverName string) (*tls.Config, error) {
	config := &tls.Config{ServerName: serverName, MinVersion: tls.VersionTLS12}
	if caFile != "" {
		ca, err := readPEM(caFile, "--tls-ca")
		if err != nil {
			return nil, err
		}
		config.RootCAs = x509.NewCertPool()
		if !config.RootCAs.AppendCertsFromPEM(ca) {
			return nil, fmt.Errorf("--tls-ca: no certificate in %s", caFile)
		}
	}
	if (certFile == "") != (keyFile == "") {
		return nil, errors.New("--tls-cert and --tls-key go together (mutual TLS needs both)")
	}
	if certFile != "" {
		cert, err := readPEM(certFile, "--tls-cert")
		if err != nil {
			return nil, err
		}
		key, err := readPEM(keyFile, "--tls-key")
		if err != nil {
			return nil, err
		}
		pair, err := tls.X509KeyPair(cert, key)
		if err != nil {
			return nil, fmt.Errorf("--tls-cert %s / --tls-key %s: %v", certFile, keyFile, err)
		}
		config.Certificates = []tls.Certificate{pair}
	}
	return config, nil
}

func buildRequest(requestJSON, user, cart, strategy string, limit uint, explain bool) *xsellv1.RecommendRequest {
	req := &xsellv1.RecommendRequest{}
	if requestJSON != "" {
		if err := protojson.Unmarshal([]byte(requestJSON), req); err != nil {
			fail("--request: %v", err)
		}
		return req
	}
	s, ok := strategies[strategy]
	if !ok {
		fail("--strategy: %q is not one of cross_sell, up_sell, both", strategy)
	}
	req.UserId, req.Strategy, req.Limit, req.Explain = user, s, uint32(limit), explain
	for _, id := range strings.Split(cart, ",") {
		if id = strings.TrimSpace(id); id != "" {
			req.Cart = append(req.Cart, &xsellv1.CartLine{ItemId: id, Quantity: 1})
		}
	}
	return req
}

func main() {
	address := flag.String("address", "127.0.0.1:50051", "server HOST:PORT")
	requestJSON := flag.String("request", "", "RecommendRequest in proto3 JSON (overrides the other request flags)")
	user := flag.String("user", "", "shopper id")
	cart := flag.String("cart", "", "comma-separated cart item ids")
	strategy := flag.String("strategy", "both", "cross_sell, up_sell or both")
	limit := flag.Uint("limit", 0, "items per list (0 = server default)")
	explain := flag.Bool("explain", false, "ask for reasons")
	token := flag.String("token", os.Getenv("XSELL_TOKEN"), "bearer token (default $XSELL_TOKEN)")
	timeout := flag.Duration("timeout", 5*time.Second, "deadline per call")
	useTLS := flag.Bool("tls", false, "TLS with the system's CA roots")
	caFile := flag.String("tls-ca", "", "CA certificate (PEM); turns TLS on")
	certFile := flag.String("tls-cert", "", "client certificate (PEM) for mutual TLS; turns TLS on")
	keyFile := flag.String("tls-key", "", "client private key (PEM) for mutual TLS")
	serverName := flag.String("tls-server-name", "", "name to verify in the server certificate")
	flag.Parse()

	req := buildRequest(*requestJSON, *user, *cart, *strategy, *limit, *explain)
	security := grpc.WithInsecure()
	secure := *useTLS || *caFile != "" || *certFile != "" || *keyFile != ""
	if secure {
		config, err := tlsConfig(*caFile, *certFile, *keyFile, *serverName)
		if err != nil {
			fail("%v", err)
		}
		security = grpc.WithTransportCredentials(credentials.NewTLS(config))
	} else if *serverName != "" {
		// a server name on a plaintext channel would be silently ignored
		fail("--tls-server-name needs TLS (--tls-ca, --tls-cert or --tls)")
	}
	conn, err := grpc.Dial(*address, security)
	if err != nil {
		fail("dial %s: %v", *address, err)
	}
	defer conn.Close()
	client := xsellv1.NewRecommendServiceClient(conn)

	// A refused TLS handshake often reaches the client only as a closed connection
	// (with TLS 1.3 the server checks the client's certificate after the client has
	// finished), so UNAVAILABLE says what to check.
	hint := func(st *status.Status) string {
		switch {
		case st.Code() != codes.Unavailable:
			return ""
		case !secure:
			return " (plaintext channel: if the server uses TLS, give --tls-ca or --tls)"
		case *certFile == "":
			return " (if the server requires mutual TLS, give --tls-cert and --tls-key)"
		}
		return ""
	}
	call := func() (context.Context, context.CancelFunc) {
		ctx, cancel := context.WithTimeout(context.Background(), *timeout)
		if *token != "" {
			ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+*token)
		}
		return ctx, cancel
	}
	ctx, cancel := call()
	info, err := client.GetModelInfo(ctx, &xsellv1.GetModelInfoRequest{})
	cancel()
	if err != nil {
		st := status.Convert(err)
		fail("GetModelInfo: %s: %s%s", codeName(st.Code()), st.Message(), hint(st))
	}
	ctx, cancel = call()
	var trailer metadata.MD
	resp, err := client.Recommend(ctx, req, grpc.Trailer(&trailer))
	cancel()
	if err != nil {
		st := status.Convert(err)
		field := ""
		if values := trailer.Get("xsell-error-field"); len(values) > 0 {
			field = " (field " + values[0] + ")"
		}
		fail("Recommend: %s: %s%s%s", codeName(st.Code()), st.Message(), field, hint(st))
	}

	marshal := protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}
	out := map[string]json.RawMessage{}
	for name, msg := range map[string]proto.Message{"model_info": info, "recommend": resp} {
		b, err := marshal.Marshal(msg)
		if err != nil {
			fail("encode %s: %v", name, err)
		}
		out[name] = b
	}
	encoded, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		fail("encode: %v", err)
	}
	fmt.Println(string(encoded))
}
