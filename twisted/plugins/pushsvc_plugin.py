from twisted.application.service import ServiceMaker

pushsvc = ServiceMaker(
    "pushsvc", "pushsvc.tap", "Real-time WebSocket push server", "pushsvc")
