// lookup_invoice(invoice_number): find an invoice in a small static ledger.
// Answers 200 {found: true, invoice: {...}} or {found: false, invoice_number}; 422 on bad input.
const INVOICES = [
  { invoice_number: 'INV-2026-0001', vendor: 'Northwind Office Supplies', amount: 1240.5, currency: 'EUR', status: 'paid', issued_on: '2026-01-05', due_date: '2026-02-04', paid_on: '2026-01-28' },
  { invoice_number: 'INV-2026-0002', vendor: 'Contoso Cloud Services', amount: 8900.0, currency: 'USD', status: 'open', issued_on: '2026-10-30', due_date: '2026-12-29', paid_on: null },
  { invoice_number: 'INV-2026-0003', vendor: 'Fabrikam Facilities', amount: 3150.75, currency: 'EUR', status: 'overdue', issued_on: '2026-08-01', due_date: '2026-08-31', paid_on: null },
  { invoice_number: 'INV-2026-0004', vendor: 'Tailspin Travel', amount: 612.3, currency: 'GBP', status: 'disputed', issued_on: '2026-11-12', due_date: '2026-12-12', paid_on: null },
];

const answer = (statusCode, body) => [{ json: { statusCode, body } }];
const { invoice_number: wanted } = $input.first().json.arguments;
if (typeof wanted !== 'string' || !/[0-9]/.test(wanted) || wanted.length > 64) {
  return answer(422, { error: 'invoice_number must be text holding the invoice\'s number, e.g. INV-2026-0002' });
}
// Callers say "invoice 2" or "inv 2026 0002": compare the digits, ignoring leading zeros.
const key = (text) => text.replace(/[^0-9]/g, '');
const digits = key(wanted);
const invoice = INVOICES.find(
  (row) => key(row.invoice_number) === digits || key(row.invoice_number).slice(4).replace(/^0+/, '') === digits.replace(/^0+/, ''),
);
if (!invoice) {
  return answer(200, { found: false, invoice_number: wanted });
}
return answer(200, { found: true, invoice });
