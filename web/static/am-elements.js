// The custom elements an ATS drops into its own pages, in one module to import:
//   <agency-messages candidate="c1">       the message bubble and its dialog
//   <agency-unread-line candidate="c1">    the top bar's "new message" line
//   <agency-inbox [href-template="…"]>     the top bar's inbox across candidates (am-inbox.css)
//   <agency-candidate-list>                candidates by latest activity, with their blue dots
// They share one socket client (am-client.js) through am-shared.js. The dialog's parts
// (<agency-thread-tabs>, <agency-private-menu>, <agency-message-list>, <agency-seen-by>,
// <agency-compose>) are created by <agency-messages>.

import "./am-candidate-list.js";
import "./am-inbox.js";
import "./am-messages.js";
import "./am-seen-by.js";
import "./am-unread-line.js";
