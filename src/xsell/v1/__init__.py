"""Generated protobuf / gRPC code for the xsell.v1 API (see protos/xsell/v1)."""
