// @andes/client: stream LLM text from an Andes gateway at the reader's pace.
export { stream, gatewayUrls, openWebSocket, splitTokens, Session, StreamError } from "./stream.js";
export { Pacer, PacerConfig, PacerOverflow } from "./pacer.js";
export { QoETracker } from "./qoe.js";
export {
  FrameError, JSON_SUBPROTOCOL, MSGPACK_SUBPROTOCOL, ERROR_CODES, decode, encode,
  parseClientFrame, parseServerFrame, startFrame, ackFrame, paceFrame,
} from "./protocol.js";
export { createParser, readEvents, openSSE } from "./sse.js";
export { parseMarkdown, parseInline, renderMarkdown } from "./markdown.js";
